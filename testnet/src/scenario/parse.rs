//! Reading a scenario file: TOML into the [model](super::model), every mistake named with its
//! line and field.
//!
//! The TOML reader knows where every key and value is, so its own errors (a wrong type, an
//! unknown word, a field no step has) point at them; the text is read twice with it:
//! 1. the outline (`read_outline`): each `[[step]]`'s line and, if it can be read, its `do`;
//! 2. the typed read (`FileSeed`), in the file's order: `description`, `[testnet]`, and each
//!    step table into the struct of its `do` (`Kind::with_struct`), through a `StepTable`
//!    that stops at a key no step has, reads `do` and `title` itself, hands the struct the
//!    fields it takes, checks one it does not take against the type the steps that take it
//!    give it, and notes what was given.
//!
//! Then every step's fields that do not apply to its `do`, and those it needs but lacks, are
//! reported together (a step's struct says which fields it takes and which it needs:
//! `fields_of`, `required_of`); then the scenario is [validated](super::validate).

use std::fmt;
use std::marker::PhantomData;
use std::path::Path;

use serde::Deserialize;
use serde::de::value::{MapDeserializer, SeqDeserializer, StrDeserializer};
use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, IgnoredAny, IntoDeserializer, MapAccess,
    SeqAccess, Visitor,
};

use super::ScenarioError;
use super::model::{Kind, PlacedStep, Scenario, Step, StepCommon, TestnetSpec, WithStepStruct};
use super::validate::validate;

/// Every key a step table may have, in the order the message for an unknown one has always
/// listed them: `do`, `title`, the steps' fields, and the aliases of [`ALIASES`].
/// `tests::step_keys_are_the_structs_fields` keeps it equal to what the structs declare.
const STEP_KEYS: &[&str] = &[
    "do",
    "title",
    "slice",
    "slivers",
    "nodes",
    "resources",
    "duration",
    "lease",
    "federations",
    "min_sites",
    "mode",
    "via",
    "agents",
    "expect",
    "expect_slivers",
    "timeout_secs",
    "retry_secs",
    "command",
    "expect_output",
    "expect_exit",
    "expect_live",
    "expect_measured",
    "for",
    "expect_renewed",
    "expect_held",
    "expect_released",
    "host",
    "hosts",
    "wait_secs",
    "secs",
    "each",
    "total",
    "within_secs",
    "add",
    "del",
    "expect_keys",
    "federation",
    "principal",
    "through",
    "expect_ended",
    "expect_dropped",
    "kill_hosts",
    "kill_after_ms",
    "expect_replaced",
    "unplanned_within_secs",
];

/// Keys read as another field, whatever the step: `host = "node1"` is `hosts = "node1"`.
const ALIASES: &[(&str, &str)] = &[("host", "hosts")];

/// The top-level keys of a scenario file.
const FILE_KEYS: &[&str] = &["description", "testnet", "step"];

/// Reads and validates a scenario file.
pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
    let source = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ScenarioError {
        source: source.clone(),
        problems: vec![format!("cannot read it: {e}")],
    })?;
    parse(&text, &source)
}

/// Parses and validates a scenario; `source` names it in errors.
pub fn parse(text: &str, source: &str) -> Result<Scenario, ScenarioError> {
    let error = |problems: Vec<String>| ScenarioError {
        source: source.to_owned(),
        problems,
    };
    let toml_error = |e: toml::de::Error| error(vec![e.to_string().trim_end().to_owned()]);
    let outline = read_outline(text);
    let kinds: Vec<Option<Kind>> = match &outline {
        Ok(steps) => steps.iter().map(|s| s.kind).collect(),
        Err(_) => Vec::new(),
    };
    let file = FileSeed { kinds: &kinds }
        .deserialize(toml::Deserializer::new(text))
        .map_err(toml_error)?;
    // The typed read fails wherever the outline does: this error shows only if it did not.
    let outline = outline.map_err(toml_error)?;
    let mut problems = Vec::new();
    let mut steps = Vec::new();
    for (i, (read, placed)) in file.steps.into_iter().zip(&outline).enumerate() {
        let line = placed.line;
        let kind = read.kind.map_or("?", Kind::word);
        let here = |w: String| format!("line {line}: step {} (do = {kind:?}): {w}", i + 1);
        match read.step {
            Some(step) if read.problems.is_empty() => steps.push(PlacedStep {
                common: StepCommon {
                    line,
                    title: read.title,
                },
                step,
            }),
            _ if read.problems.is_empty() => problems.push(here("cannot be read".into())),
            _ => problems.extend(read.problems.into_iter().map(here)),
        }
    }
    if !problems.is_empty() {
        return Err(error(problems));
    }
    let scenario = Scenario {
        source: source.to_owned(),
        description: file.description,
        testnet: file.testnet,
        steps,
    };
    let problems = validate(&scenario);
    if problems.is_empty() {
        Ok(scenario)
    } else {
        Err(error(problems))
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|b| *b == b'\n')
        .count()
        + 1
}

// ---------------------------------------------------------------------------------------------
// The outline.
// ---------------------------------------------------------------------------------------------

/// Where a step is, and its `do` if it can be read.
#[derive(Debug)]
struct StepOutline {
    line: usize,
    kind: Option<Kind>,
}

/// Each step's line and `do`; any other mistake is left to the typed read.
fn read_outline(text: &str) -> Result<Vec<StepOutline>, toml::de::Error> {
    #[derive(Deserialize)]
    struct Outline {
        #[serde(default)]
        step: Vec<toml::Spanned<KindOnly>>,
    }
    struct KindOnly(Option<Kind>);
    impl<'de> Deserialize<'de> for KindOnly {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Look;
            impl<'de> Visitor<'de> for Look {
                type Value = KindOnly;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a step table")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<KindOnly, A::Error> {
                    let mut kind = None;
                    while let Some(key) = map.next_key::<String>()? {
                        if key == "do" {
                            kind = map.next_value::<Kind>().ok();
                        } else {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                    Ok(KindOnly(kind))
                }
            }
            d.deserialize_map(Look)
        }
    }
    let outline: Outline = toml::from_str(text)?;
    Ok(outline
        .step
        .into_iter()
        .map(|s| StepOutline {
            line: line_of(text, s.span().start),
            kind: s.into_inner().0,
        })
        .collect())
}

// ---------------------------------------------------------------------------------------------
// The typed read.
// ---------------------------------------------------------------------------------------------

/// A scenario file as read, before its steps' problems are reported.
struct FileRead {
    description: Option<String>,
    testnet: TestnetSpec,
    steps: Vec<StepRead>,
}

/// One step table as read.
struct StepRead {
    /// Its `do`.
    kind: Option<Kind>,
    title: Option<String>,
    /// The step, if its struct could be made.
    step: Option<Step>,
    /// What is wrong with it (without its line).
    problems: Vec<String>,
}

/// Reads a scenario file, each step into the struct of its `do` as the outline has it.
struct FileSeed<'a> {
    kinds: &'a [Option<Kind>],
}

impl<'de> DeserializeSeed<'de> for FileSeed<'_> {
    type Value = FileRead;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<FileRead, D::Error> {
        d.deserialize_struct("ScenarioFile", FILE_KEYS, self)
    }
}

impl<'de> Visitor<'de> for FileSeed<'_> {
    type Value = FileRead;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("struct ScenarioFile")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<FileRead, A::Error> {
        let mut file = FileRead {
            description: None,
            testnet: TestnetSpec::default(),
            steps: Vec::new(),
        };
        while let Some(key) = map.next_key_seed(KeyIn(FILE_KEYS))? {
            match key {
                "description" => file.description = Some(map.next_value()?),
                "testnet" => file.testnet = map.next_value()?,
                // "step", the last of `FILE_KEYS`.
                _ => file.steps = map.next_value_seed(StepsSeed { kinds: self.kinds })?,
            }
        }
        Ok(file)
    }
}

/// A key that must be one of these (as written, aliases included); it is given canonical.
struct KeyIn(&'static [&'static str]);

impl<'de> DeserializeSeed<'de> for KeyIn {
    type Value = &'static str;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<&'static str, D::Error> {
        d.deserialize_identifier(self)
    }
}

impl<'de> Visitor<'de> for KeyIn {
    type Value = &'static str;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<&'static str, E> {
        let Some(known) = self.0.iter().find(|k| **k == key) else {
            return Err(E::unknown_field(key, self.0));
        };
        Ok(ALIASES
            .iter()
            .find(|(alias, _)| alias == known)
            .map_or(*known, |(_, field)| *field))
    }
}

/// The `[[step]]` list.
struct StepsSeed<'a> {
    kinds: &'a [Option<Kind>],
}

impl<'de> DeserializeSeed<'de> for StepsSeed<'_> {
    type Value = Vec<StepRead>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<StepRead>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for StepsSeed<'_> {
    type Value = Vec<StepRead>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a sequence")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<StepRead>, A::Error> {
        let mut steps = Vec::new();
        while let Some(step) = seq.next_element_seed(StepSeed {
            kind: self.kinds.get(steps.len()).copied().flatten(),
        })? {
            steps.push(step);
        }
        Ok(steps)
    }
}

/// One step table, whose `do` (from the outline) is `kind`.
struct StepSeed {
    kind: Option<Kind>,
}

impl<'de> DeserializeSeed<'de> for StepSeed {
    type Value = StepRead;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<StepRead, D::Error> {
        d.deserialize_struct("RawStep", STEP_KEYS, self)
    }
}

impl<'de> Visitor<'de> for StepSeed {
    type Value = StepRead;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // As serde worded it when every step was read into one struct of all fields.
        f.write_str("struct RawStep")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<StepRead, A::Error> {
        let mut table = StepTable {
            map,
            takes: &[],
            given: Vec::new(),
            has_do: false,
            title: None,
        };
        let (step, missing) = match self.kind {
            Some(kind) => kind.with_struct(ReadStruct {
                table: &mut table,
                de: PhantomData,
            })?,
            // `do` could not be read: the error comes when it is (or says it is missing).
            None => {
                table.skip_rest().map_err(TableError::into_reader)?;
                (None, Vec::new())
            }
        };
        if !table.has_do {
            return Err(de::Error::missing_field("do"));
        }
        let mut problems = Vec::new();
        if let Some(kind) = self.kind {
            let mut not_taken: Vec<&str> = table
                .given
                .iter()
                .copied()
                .filter(|f| !table.takes.contains(f))
                .collect();
            not_taken.sort_by_key(|f| STEP_KEYS.iter().position(|k| k == f));
            for field in not_taken {
                problems.push(format!(
                    "`{field}` does not apply to do = {:?} ({})",
                    kind.word(),
                    if table.takes.is_empty() {
                        "it takes only `title`".to_owned()
                    } else {
                        format!("it takes {}", table.takes.join(", "))
                    }
                ));
            }
            for field in missing {
                problems.push(format!(
                    "`{field}` is missing (do = {:?} needs it)",
                    kind.word()
                ));
            }
        }
        if problems.is_empty()
            && let Some(Step::Keys(k)) = &step
            && k.add.is_some()
            && k.del.is_some()
        {
            problems.push("give `add` or `del`, not both (neither: list the keys)".into());
        }
        Ok(StepRead {
            kind: self.kind,
            title: table.title,
            step,
            problems,
        })
    }
}

/// Makes the struct of a step's kind from its table: the step (`None` if a field it needs is
/// missing) and the fields it needs that were not given.
struct ReadStruct<'t, 'de, A> {
    table: &'t mut StepTable<A>,
    de: PhantomData<&'de ()>,
}

impl<'de, A: MapAccess<'de>> WithStepStruct for ReadStruct<'_, 'de, A> {
    type Output = Result<(Option<Step>, Vec<&'static str>), A::Error>;

    fn with<T: DeserializeOwned>(self, into_step: fn(T) -> Step) -> Self::Output {
        let step = match T::deserialize(&mut *self.table) {
            Ok(t) => Some(into_step(t)),
            // Every field missing is found below, not only the first.
            Err(TableError::Missing(_)) => None,
            Err(e) => return Err(e.into_reader()),
        };
        let missing = required_of::<T>()
            .into_iter()
            .filter(|f| !self.table.given.contains(f))
            .collect();
        Ok((step, missing))
    }
}

/// An error while one step table is read: the TOML reader's (it knows where), a field the
/// struct needs and did not get (every such field is reported, not only the first), or
/// another (where: the table).
#[derive(Debug)]
enum TableError<E> {
    Toml(E),
    Missing(&'static str),
    Other(String),
}

impl<E: de::Error> TableError<E> {
    /// As the TOML reader's error (which then says where: the table, if it does not know).
    fn into_reader(self) -> E {
        match self {
            TableError::Toml(e) => e,
            TableError::Missing(field) => E::missing_field(field),
            TableError::Other(e) => E::custom(e),
        }
    }
}

impl<E: fmt::Display> fmt::Display for TableError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TableError::Toml(e) => e.fmt(f),
            TableError::Missing(field) => write!(f, "missing field `{field}`"),
            TableError::Other(e) => f.write_str(e),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for TableError<E> {}

impl<E: de::Error> de::Error for TableError<E> {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        TableError::Other(msg.to_string())
    }

    fn missing_field(field: &'static str) -> Self {
        TableError::Missing(field)
    }
}

/// A step table, read for the struct of its kind: `do` and `title` are read here; a field the
/// struct takes goes to it; any other is checked for its type and noted as not taken.
struct StepTable<A> {
    map: A,
    /// The fields the struct takes (set when serde asks for the struct).
    takes: &'static [&'static str],
    /// The fields given (canonical names), but `do` and `title`.
    given: Vec<&'static str>,
    has_do: bool,
    title: Option<String>,
}

impl<'de, A: MapAccess<'de>> StepTable<A> {
    /// Reads the keys left, with no struct to give them to.
    fn skip_rest(&mut self) -> Result<(), TableError<A::Error>> {
        let mut table = self;
        while table.next_key_seed(PhantomData::<IgnoredAny>)?.is_some() {
            table.next_value_seed(PhantomData::<IgnoredAny>)?;
        }
        Ok(())
    }
}

impl<'de, A: MapAccess<'de>> Deserializer<'de> for &mut StepTable<A> {
    type Error = TableError<A::Error>;

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.takes = fields;
        visitor.visit_map(self)
    }

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_map(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for &mut StepTable<A> {
    type Error = TableError<A::Error>;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        loop {
            let Some(key) = self
                .map
                .next_key_seed(KeyIn(STEP_KEYS))
                .map_err(TableError::Toml)?
            else {
                return Ok(None);
            };
            match key {
                "do" => {
                    self.map.next_value::<Kind>().map_err(TableError::Toml)?;
                    self.has_do = true;
                }
                "title" => {
                    self.title = Some(self.map.next_value().map_err(TableError::Toml)?);
                }
                field => {
                    if self.given.contains(&field) {
                        return Err(TableError::Toml(de::Error::duplicate_field(field)));
                    }
                    self.given.push(field);
                    if self.takes.contains(&field) {
                        return seed
                            .deserialize(StrDeserializer::<Self::Error>::new(field))
                            .map(Some);
                    }
                    self.map
                        .next_value_seed(CheckType { field })
                        .map_err(TableError::Toml)?;
                }
            }
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        self.map.next_value_seed(seed).map_err(TableError::Toml)
    }
}

/// Checks a field's value against the type the first kind that takes the field gives it (the
/// kinds agree), for a step that does not take it: a wrong value is reported as such first.
struct CheckType {
    field: &'static str,
}

impl<'de> DeserializeSeed<'de> for CheckType {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        struct Check<'de, D> {
            field: &'static str,
            value: D,
            de: PhantomData<&'de ()>,
        }
        impl<'de, D: Deserializer<'de>> WithStepStruct for Check<'de, D> {
            type Output = Result<(), D::Error>;
            fn with<T: DeserializeOwned>(self, _: fn(T) -> Step) -> Self::Output {
                match T::deserialize(OneField {
                    field: self.field,
                    value: Some(self.value),
                }) {
                    // The struct's other fields are not there: only this one is checked.
                    Ok(_) | Err(TableError::Missing(_)) => Ok(()),
                    Err(e) => Err(e.into_reader()),
                }
            }
        }
        let Some(kind) = Kind::ALL
            .into_iter()
            .find(|k| fields_of_kind(*k).contains(&self.field))
        else {
            // No step takes it (`STEP_KEYS` and the structs agree: see the tests).
            IgnoredAny::deserialize(d)?;
            return Ok(());
        };
        kind.with_struct(Check {
            field: self.field,
            value: d,
            de: PhantomData,
        })
    }
}

/// A table of one field, `field = value`.
struct OneField<D> {
    field: &'static str,
    value: Option<D>,
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for OneField<D> {
    type Error = TableError<D::Error>;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_map(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct enum
        identifier ignored_any
    }
}

impl<'de, D: Deserializer<'de>> MapAccess<'de> for OneField<D> {
    type Error = TableError<D::Error>;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        if self.value.is_none() {
            return Ok(None);
        }
        seed.deserialize(StrDeserializer::<Self::Error>::new(self.field))
            .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        let value = self
            .value
            .take()
            .ok_or_else(|| TableError::Other("no value".into()))?;
        seed.deserialize(value).map_err(TableError::Toml)
    }
}

// ---------------------------------------------------------------------------------------------
// What a step's struct declares: the fields it takes, and those it needs.
// ---------------------------------------------------------------------------------------------

/// What asking a struct about itself found: its fields, a field it needs, or a surprise.
#[derive(Debug)]
enum Introspected {
    Fields(&'static [&'static str]),
    Missing(&'static str),
    Other(String),
}

impl fmt::Display for Introspected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Introspected::Fields(fields) => write!(f, "fields {fields:?}"),
            Introspected::Missing(field) => write!(f, "missing field `{field}`"),
            Introspected::Other(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for Introspected {}

impl de::Error for Introspected {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Introspected::Other(msg.to_string())
    }

    fn missing_field(field: &'static str) -> Self {
        Introspected::Missing(field)
    }
}

/// The fields `T` takes, in the order it declares them (as serde names them).
fn fields_of<T: DeserializeOwned>() -> &'static [&'static str] {
    /// Answers serde's request for a struct with the struct's field names.
    struct Names;
    impl<'de> Deserializer<'de> for Names {
        type Error = Introspected;
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Introspected> {
            Err(Introspected::Fields(fields))
        }
        fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Introspected> {
            Err(Introspected::Other("not a struct".into()))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }
    match T::deserialize(Names) {
        Err(Introspected::Fields(fields)) => fields,
        _ => &[],
    }
}

/// The fields a kind of step takes.
fn fields_of_kind(kind: Kind) -> &'static [&'static str] {
    struct Fields;
    impl WithStepStruct for Fields {
        type Output = &'static [&'static str];
        fn with<T: DeserializeOwned>(self, _: fn(T) -> Step) -> Self::Output {
            fields_of::<T>()
        }
    }
    kind.with_struct(Fields)
}

/// The fields `T` needs (those with no default), in the order it declares them: serde says
/// which is missing first from a table that lacks it, so it is asked again with each found
/// one given a stand-in value, until nothing is missing.
fn required_of<T: DeserializeOwned>() -> Vec<&'static str> {
    let mut required = Vec::new();
    loop {
        let given = required.iter().map(|f: &&'static str| (*f, StandIn));
        match T::deserialize(MapDeserializer::<_, Introspected>::new(given)) {
            Err(Introspected::Missing(field)) if !required.contains(&field) => required.push(field),
            _ => return required,
        }
    }
}

/// A value of whatever type is asked for: empty, zero or false.
#[derive(Debug, Clone, Copy)]
struct StandIn;

impl<'de> IntoDeserializer<'de, Introspected> for StandIn {
    type Deserializer = StandIn;

    fn into_deserializer(self) -> StandIn {
        self
    }
}

impl<'de> Deserializer<'de> for StandIn {
    type Error = Introspected;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Introspected> {
        visitor.visit_str("")
    }
    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Introspected> {
        visitor.visit_bool(false)
    }
    fn deserialize_i8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Introspected> {
        visitor.visit_i64(0)
    }
    fn deserialize_i16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Introspected> {
        visitor.visit_i64(0)
    }
    fn deserialize_i32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Introspected> {
        visitor.visit_i64(0)
    }
    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Introspected> {
        visitor.visit_i64(0)
    }
    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Introspected> {
        visitor.visit_u64(0)
    }
    fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Introspected> {
        visitor.visit_u64(0)
    }
    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Introspected> {
        visitor.visit_u64(0)
    }
    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Introspected> {
        visitor.visit_u64(0)
    }
    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Introspected> {
        visitor.visit_f64(0.0)
    }
    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Introspected> {
        visitor.visit_f64(0.0)
    }
    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Introspected> {
        visitor.visit_none()
    }
    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Introspected> {
        visitor.visit_seq(SeqDeserializer::new(std::iter::empty::<StandIn>()))
    }
    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Introspected> {
        visitor.visit_map(MapDeserializer::new(
            std::iter::empty::<(StandIn, StandIn)>(),
        ))
    }

    serde::forward_to_deserialize_any! {
        i128 u128 char str string bytes byte_buf unit unit_struct newtype_struct tuple
        tuple_struct struct enum identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use serde::de::DeserializeOwned;

    use super::*;
    use crate::scenario::{Class, KeysAction, Mode, OneOrMany, Via};

    const GOOD: &str = r#"
description = "a test"

[testnet]
nodes = 4
agents = 2

[[step]]
do = "acquire"
slice = "fed0-site0_t"
slivers = 2
resources = "cpu=100m,memory=64MiB"
federations = ["fed0", "fed1"]
expect = ["ok", "partial"]

[[step]]
do = "exec"
slice = "fed0-site0_t"
command = "echo hi"
expect_output = "hi"

[[step]]
do = "kill"
host = "node1"

[[step]]
do = "down"
"#;

    fn problems(text: &str) -> Vec<String> {
        match parse(text, "t.toml") {
            Ok(s) => panic!("{text}\nparsed: {s:?}"),
            Err(e) => {
                assert_eq!(e.source, "t.toml");
                e.problems
            }
        }
    }

    fn one_problem(text: &str) -> String {
        let p = problems(text);
        assert_eq!(p.len(), 1, "{p:#?}");
        p.into_iter().next().unwrap()
    }

    #[test]
    fn every_scenario_file_parses_and_validates() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let s = load(&path).unwrap_or_else(|e| panic!("{e}"));
                assert!(
                    s.description.is_some(),
                    "{}: say what it shows",
                    path.display()
                );
                assert!(
                    matches!(s.steps.last().map(|p| &p.step), Some(Step::Down(_))),
                    "{}: end with do = \"down\" so nothing left is checked",
                    path.display()
                );
                seen += 1;
            }
        }
        assert!(seen >= 4, "{seen} scenario files in {}", dir.display());
    }

    #[test]
    fn a_scenario_becomes_typed_steps_with_their_lines() {
        let s = parse(GOOD, "t.toml").unwrap();
        assert_eq!(s.description.as_deref(), Some("a test"));
        assert_eq!(s.testnet.topology().nodes, 4);
        assert_eq!(s.testnet.topology().federations, 2);
        let lines: Vec<usize> = s.steps.iter().map(|p| p.common.line).collect();
        assert_eq!(lines, [8, 16, 22, 26]);
        let Step::Acquire(a) = &s.steps[0].step else {
            panic!("{:?}", s.steps[0])
        };
        assert_eq!(a.slivers, Some(2));
        assert_eq!(a.mode, Mode::AllOrNothing);
        assert_eq!(a.via, Via::Broker);
        assert_eq!(
            a.expect,
            Some(OneOrMany::Many(vec![Class::Ok, Class::Partial]))
        );
        let Step::Exec(e) = &s.steps[1].step else {
            panic!()
        };
        assert_eq!(e.command, OneOrMany::One("echo hi".into()));
        assert_eq!(e.expect_exit, 0);
        let Step::Kill(k) = &s.steps[2].step else {
            panic!()
        };
        assert_eq!(k.hosts.to_vec(), ["node1"]);
        assert!(s.steps[0].summary().contains("acquire fed0-site0_t"));
    }

    #[test]
    fn spawn_logs_and_keys_steps_are_typed_and_checked() {
        let text = r#"
[[step]]
do = "acquire"
slice = "fed0-site0_k"
slivers = 2
resources = "cpu=100m"

[[step]]
do = "spawn"
slice = "fed0-site0_k"
command = "echo up; sleep 30"
expect_slivers = 2

[[step]]
do = "logs"
slice = "fed0-site0_k"
expect_output = "up"
retry_secs = 5

[[step]]
do = "keys"
slice = "fed0-site0_k"
add = "ssh-ed25519 AAAA x@y"
expect_keys = 1

[[step]]
do = "keys"
slice = "fed0-site0_k"
del = "x@y"

[[step]]
do = "keys"
slice = "fed0-site0_k"
expect_keys = 0

[[step]]
do = "down"
"#;
        let s = parse(text, "t.toml").unwrap();
        let Step::Spawn(sp) = &s.steps[1].step else {
            panic!("{:?}", s.steps[1])
        };
        // It runs under `/bin/sh -c` (`runner::tests`).
        assert_eq!(sp.command, OneOrMany::One("echo up; sleep 30".into()));
        assert_eq!(sp.expect_slivers, Some(2));
        let Step::Logs(l) = &s.steps[2].step else {
            panic!("{:?}", s.steps[2])
        };
        assert_eq!(l.expect_output.as_deref(), Some("up"));
        assert_eq!(l.retry_secs, Some(5));
        let actions: Vec<KeysAction> = s.steps[3..6]
            .iter()
            .map(|p| match &p.step {
                Step::Keys(k) => k.action(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            actions,
            [
                KeysAction::Add("ssh-ed25519 AAAA x@y".into()),
                KeysAction::Del("x@y".into()),
                KeysAction::List
            ]
        );
        assert!(s.steps[5].summary().contains("list the keys"));

        // Both add and del, a field that does not apply, a slice not held, an empty command.
        let p = one_problem(
            "[[step]]\ndo = \"keys\"\nslice = \"fed0-site0_x\"\nadd = \"k\"\ndel = \"k\"\n",
        );
        assert!(p.contains("line 1") && p.contains("not both"), "{p}");
        let p = one_problem(
            "[[step]]\ndo = \"logs\"\nslice = \"fed0-site0_x\"\ncommand = \"ls\"\nexpect = \"not_found\"\n",
        );
        assert!(p.contains("`command` does not apply"), "{p}");
        let p =
            one_problem("[[step]]\ndo = \"spawn\"\nslice = \"fed0-site0_x\"\ncommand = \"ls\"\n");
        assert!(p.contains("is not held here"), "{p}");
        let p = problems(
            "[[step]]\ndo = \"acquire\"\nslice = \"fed0-site0_x\"\nslivers = 1\nresources = \"cpu=1\"\n\n[[step]]\ndo = \"spawn\"\nslice = \"fed0-site0_x\"\ncommand = \" \"\n",
        );
        assert!(p.iter().any(|p| p.contains("`command` is empty")), "{p:#?}");
    }

    #[test]
    fn toml_mistakes_name_the_line_and_the_field() {
        let p = one_problem(
            "[[step]]\ndo = \"acquire\"\nslice = \"fed0-site0_x\"\nslivers = 1\nresources = \"cpu=1\"\nexpect_sliver = 1\n",
        );
        assert!(p.contains("line 6"), "{p}");
        assert!(p.contains("unknown field `expect_sliver`"), "{p}");

        let p = one_problem("[[step]]\ndo = \"acquir\"\n");
        assert!(
            p.contains("line 2") && p.contains("unknown variant `acquir`"),
            "{p}"
        );

        let p = one_problem(
            "[[step]]\ndo = \"acquire\"\nslice = \"fed0-site0_x\"\nslivers = \"two\"\nresources = \"cpu=1\"\n",
        );
        assert!(
            p.contains("line 4") && p.contains("slivers = \"two\""),
            "{p}"
        );

        let p = one_problem(
            "[[step]]\ndo = \"delete\"\nslice = \"fed0-site0_x\"\nexpect = \"unreachble\"\n",
        );
        assert!(
            p.contains("line 4") && p.contains("unknown variant `unreachble`"),
            "{p}"
        );

        let p = one_problem("[testnet]\nnodse = 3\n");
        assert!(
            p.contains("line 2") && p.contains("unknown field `nodse`"),
            "{p}"
        );

        let p = one_problem("[testnet]\nnetwork = \"bridge\"\n");
        assert!(p.contains("line 2") && p.contains("`namespaces`"), "{p}");

        let p = one_problem("[[step]]\ndo = \"renew\"\nslice = \"fed0-site0_x\"\nfor = \n");
        assert!(p.contains("line 4"), "{p}");
    }

    #[test]
    fn fields_that_do_not_apply_or_are_missing_are_named() {
        let p = problems(
            "[[step]]\ndo = \"renew\"\nslice = \"fed0-site0_x\"\ncommand = \"ls\"\n\n[[step]]\ndo = \"exec\"\n",
        );
        assert_eq!(p.len(), 3, "{p:#?}");
        assert!(
            p[0].starts_with("line 1: step 1 (do = \"renew\"): `command` does not apply"),
            "{p:#?}"
        );
        assert!(p[0].contains("it takes slice, for,"), "{p:#?}");
        assert!(p[1].starts_with("line 6: step 2 (do = \"exec\"): `slice` is missing"));
        assert!(p[2].contains("`command` is missing"));
        let p = one_problem(
            "[testnet]\nreuse = \"x\"\n[[step]]\ndo = \"renew\"\nslice = \"fed0-site0_x\"\nretry_secs = 0\nexpect = \"not_found\"\n",
        );
        assert!(
            p.contains("line 3") && p.contains("`retry_secs` must be at least 1"),
            "{p}"
        );
        let p = one_problem("[[step]]\ndo = \"heal\"\nhosts = [\"node0\"]\n");
        assert!(p.contains("it takes only `title`"), "{p}");
    }

    #[test]
    fn step_keys_are_the_structs_fields() {
        let mut declared: Vec<&str> = vec!["do", "title"];
        declared.extend(ALIASES.iter().map(|(alias, _)| *alias));
        for kind in Kind::ALL {
            declared.extend(fields_of_kind(kind));
        }
        declared.sort_unstable();
        declared.dedup();
        let mut keys = STEP_KEYS.to_vec();
        keys.sort_unstable();
        let len = keys.len();
        keys.dedup();
        assert_eq!(keys.len(), len, "a key twice in STEP_KEYS");
        assert_eq!(keys, declared);
    }

    #[test]
    fn each_kind_takes_and_needs_what_its_struct_declares() {
        // As the module documentation's table says, in this order (the order of the
        // "it takes …" messages).
        let expect: [(Kind, &[&str], &[&str]); 18] = [
            (
                Kind::Acquire,
                &[
                    "slice",
                    "slivers",
                    "nodes",
                    "resources",
                    "duration",
                    "lease",
                    "federations",
                    "min_sites",
                    "mode",
                    "via",
                    "agents",
                    "expect",
                    "expect_slivers",
                    "timeout_secs",
                    "kill_hosts",
                    "kill_after_ms",
                    "expect_replaced",
                ],
                &["slice", "resources"],
            ),
            (
                Kind::Exec,
                &[
                    "slice",
                    "command",
                    "expect_output",
                    "expect_exit",
                    "expect_slivers",
                    "expect",
                    "timeout_secs",
                    "retry_secs",
                ],
                &["slice", "command"],
            ),
            (
                Kind::Status,
                &[
                    "slice",
                    "expect_live",
                    "expect_measured",
                    "expect",
                    "timeout_secs",
                    "retry_secs",
                ],
                &["slice"],
            ),
            (
                Kind::Renew,
                &[
                    "slice",
                    "for",
                    "expect_renewed",
                    "expect",
                    "timeout_secs",
                    "retry_secs",
                ],
                &["slice"],
            ),
            (
                Kind::Sync,
                &[
                    "slice",
                    "expect_held",
                    "expect",
                    "timeout_secs",
                    "retry_secs",
                ],
                &["slice"],
            ),
            (
                Kind::Delete,
                &["slice", "expect_released", "expect", "timeout_secs"],
                &["slice"],
            ),
            (
                Kind::Spawn,
                &[
                    "slice",
                    "command",
                    "expect_slivers",
                    "expect",
                    "timeout_secs",
                ],
                &["slice", "command"],
            ),
            (
                Kind::Logs,
                &[
                    "slice",
                    "expect_output",
                    "expect_slivers",
                    "expect",
                    "timeout_secs",
                    "retry_secs",
                ],
                &["slice"],
            ),
            (
                Kind::Keys,
                &[
                    "slice",
                    "add",
                    "del",
                    "expect_keys",
                    "expect_slivers",
                    "expect",
                    "timeout_secs",
                ],
                &["slice"],
            ),
            (Kind::Kill, &["hosts", "unplanned_within_secs"], &["hosts"]),
            (Kind::Restart, &["hosts", "wait_secs"], &["hosts"]),
            (
                Kind::Partition,
                &["hosts", "unplanned_within_secs"],
                &["hosts"],
            ),
            (Kind::Heal, &[], &[]),
            (Kind::WaitConverged, &["timeout_secs"], &[]),
            (Kind::Sleep, &["secs"], &["secs"]),
            (
                Kind::ExpectLeases,
                &["nodes", "slice", "each", "total", "within_secs"],
                &[],
            ),
            (
                Kind::Revoke,
                &[
                    "federation",
                    "principal",
                    "hosts",
                    "through",
                    "expect_ended",
                    "expect_dropped",
                    "within_secs",
                ],
                &[],
            ),
            (Kind::Down, &[], &[]),
        ];
        for (kind, takes, needs) in expect {
            assert_eq!(fields_of_kind(kind), takes, "{kind}");
            struct Needs;
            impl WithStepStruct for Needs {
                type Output = Vec<&'static str>;
                fn with<T: DeserializeOwned>(self, _: fn(T) -> Step) -> Self::Output {
                    required_of::<T>()
                }
            }
            assert_eq!(kind.with_struct(Needs), needs, "{kind}");
        }
    }

    /// What reading `field = value` in a step of `kind` says, if it stops the TOML reader.
    fn reader_error(kind: Kind, field: &str, value: &str) -> Option<String> {
        let text = format!("[[step]]\ndo = \"{kind}\"\n{field} = {value}\n");
        parse(&text, "t.toml")
            .err()
            .map(|e| e.problems.join("\n"))
            .filter(|p| p.contains("TOML parse error"))
    }

    #[test]
    fn kinds_that_share_a_field_give_it_one_type() {
        // A field a step does not take is checked with the type of the first kind that takes
        // it: the same as every other kind that takes it.
        let values = [
            "1",
            "-1",
            "1.5",
            "\"x\"",
            "\"ok\"",
            "[\"x\"]",
            "[1]",
            "true",
            "{ a = 1 }",
        ];
        for field in STEP_KEYS.iter().filter(|k| !["do", "title"].contains(k)) {
            let canonical = ALIASES
                .iter()
                .find(|(alias, _)| alias == field)
                .map_or(*field, |(_, f)| *f);
            let kinds: Vec<Kind> = Kind::ALL
                .into_iter()
                .filter(|k| fields_of_kind(*k).contains(&canonical))
                .collect();
            assert!(!kinds.is_empty(), "no kind takes {field}");
            for value in values {
                let first = reader_error(kinds[0], field, value);
                for kind in &kinds[1..] {
                    assert_eq!(
                        reader_error(*kind, field, value),
                        first,
                        "{field} = {value} in {kind} and {}",
                        kinds[0]
                    );
                }
                // A kind that does not take it reads the value as those that do.
                if let Some(other) = Kind::ALL.into_iter().find(|k| !kinds.contains(k)) {
                    assert_eq!(
                        reader_error(other, field, value),
                        first,
                        "{field} = {value}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_step_may_give_do_anywhere_and_host_for_hosts() {
        let s = parse(
            "[[step]]\ntitle = \"crash\"\nhost = \"node1\"\ndo = \"kill\"\n\n[[step]]\ndo = \"down\"\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(
            s.steps[0].common,
            StepCommon {
                line: 1,
                title: Some("crash".into())
            }
        );
        assert_eq!(
            s.steps[0].step,
            Step::Kill(crate::scenario::Hosts {
                hosts: OneOrMany::One("node1".into()),
                unplanned_within_secs: None,
            })
        );
        assert_eq!(s.steps[0].summary(), "crash: kill node1 (SIGKILL)");
        assert_eq!(s.steps[1].common.line, 6);
        let p = one_problem("[[step]]\ndo = \"kill\"\nhost = \"node1\"\nhosts = [\"node2\"]\n");
        assert!(
            p.contains("line 1") && p.contains("duplicate field `hosts`"),
            "{p}"
        );
        let p = one_problem("[[step]]\nhost = \"node1\"\ndo = \"heal\"\n");
        assert_eq!(
            p,
            "line 1: step 1 (do = \"heal\"): `hosts` does not apply to do = \"heal\" (it takes only `title`)"
        );
    }

    #[test]
    fn the_first_mistake_in_the_file_is_the_one_reported() {
        // A wrong value before an unknown `do`, and before a `[testnet]` written after it.
        let p = one_problem("[[step]]\nslivers = \"two\"\ndo = \"acquir\"\n");
        assert!(p.contains("line 2") && p.contains("expected u32"), "{p}");
        let p =
            one_problem("[[step]]\ndo = \"acquire\"\nslivers = \"two\"\n[testnet]\nnodse = 1\n");
        assert!(p.contains("line 3") && p.contains("expected u32"), "{p}");
        let p =
            one_problem("[testnet]\nnodse = 1\n[[step]]\ndo = \"acquire\"\nslivers = \"two\"\n");
        assert!(
            p.contains("line 2") && p.contains("unknown field `nodse`"),
            "{p}"
        );
        // A field no step takes stops the reader even where `do` is unknown.
        let p = one_problem("[[step]]\nslivr = 2\ndo = \"acquir\"\n");
        assert!(
            p.contains("line 2") && p.contains("unknown field `slivr`"),
            "{p}"
        );
        // A wrong value of a field the step does not take is reported as a wrong value.
        let p = one_problem("[[step]]\ndo = \"heal\"\nsecs = \"x\"\n");
        assert!(p.contains("line 3") && p.contains("expected f64"), "{p}");
        // Missing `do`, where the table starts.
        let p = one_problem("[[step]]\ndo = \"heal\"\n\n[[step]]\ntitle = \"x\"\n");
        assert!(
            p.contains("line 4") && p.contains("missing field `do`"),
            "{p}"
        );
        let p = one_problem("step = [1]\n");
        assert!(
            p.contains("line 1") && p.contains("expected struct RawStep"),
            "{p}"
        );
    }
}
