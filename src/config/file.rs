//! `--config FILE`: a TOML file in which every flag of the server is a key, spelled as the
//! flag without its dashes (`data-dir = "/var/lib/chatixia-core"`).
//!
//! Precedence, per setting: the command line, then the flag's environment variable
//! (`CHATIXIA_DATA_DIR`, `API_KEYS_FILE`, …), then the file, then the built-in default.
//! The mechanism is clap's own: the file's values become the defaults of the command
//! before the command line is parsed, and clap already takes a flag over its variable
//! over its default. The keys are derived from the command (each long flag), so a flag
//! added later is a key with no more work; values are checked by the flag's own parser
//! before the start, and a bad file stops it with one line naming the file, the line and
//! the key. Control-thread code, run once before anything starts: blocking reads are fine.
//!
//! The settings read by hand from the environment follow the same order: `PORT` over
//! `listen` from the file ([`Cli::listen_addr`]), `SIGNALING_SECRET` and `TURN_SECRET`
//! over the file's `signaling-secret-file` and `turn-secret-file` ([`Cli::server_secret`]).

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command, CommandFactory, FromArgMatches};
use toml::de::{DeTable, DeValue};

use super::Cli;

/// Largest config file read: the complete example is about 11 KiB; this bounds what a
/// wrong path (a log, a device) makes the start read. Larger: the start fails, naming it.
pub const CONFIG_FILE_BYTES_MAX: u64 = 1 << 20;

/// Argument ids that are not settings.
const NOT_KEYS: &[&str] = &["help", "version", "config"];

/// Flags only a build with the `test-switches` feature has: keys there (generic), left
/// out of the example (which describes a default build).
pub const TEST_SWITCHES: &[&str] = &["test-clock", "ws-echo", "cluster-command-timeout"];

/// Example values for the keys that have no default (the example shows the syntax).
/// A key without a default missing here gets a placeholder from its value name.
const SAMPLES: &[(&str, &str)] = &[
    ("cores", "4"),
    ("listen", "\"0.0.0.0:8080\""),
    ("stun-url", "[\"stun:stun.l.google.com:19302\"]"),
    ("port-file", "\"/run/chatixia-core/addr\""),
    (
        "signaling-secret-file",
        "\"/etc/chatixia-core/signaling-secret\"",
    ),
    ("turn-url", "\"turn:turn.example.net:3478?transport=udp\""),
    ("turn-secret-file", "\"/etc/chatixia-core/turn-secret\""),
    ("tls-cert", "\"/etc/chatixia-core/tls/fullchain.pem\""),
    ("tls-key", "\"/etc/chatixia-core/tls/privkey.pem\""),
    ("tls-listen", "\"0.0.0.0:443\""),
    ("tls-port-file", "\"/run/chatixia-core/tls-addr\""),
    ("turn-listen", "[\"0.0.0.0:3478\"]"),
    ("turn-tls-listen", "[\"0.0.0.0:5349\"]"),
    ("turn-public-ip", "\"203.0.113.10\""),
    ("turn-allow-peer", "[\"198.51.100.0/24\"]"),
    ("turn-deny-peer", "[\"203.0.113.0/24\"]"),
];

/// Where a setting came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    CommandLine,
    Environment,
    File,
    Default,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::CommandLine => "command line",
            Source::Environment => "environment",
            Source::File => "config file",
            Source::Default => "default",
        }
    }
}

/// The TOML type a key takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Bool,
    Integer,
    Number,
    Text,
}

impl Kind {
    fn of(arg: &Arg) -> Kind {
        use std::any::TypeId;
        if matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse) {
            return Kind::Bool;
        }
        let t = arg.get_value_parser().type_id();
        let integers = [
            TypeId::of::<u8>(),
            TypeId::of::<u16>(),
            TypeId::of::<u32>(),
            TypeId::of::<u64>(),
            TypeId::of::<usize>(),
            TypeId::of::<i8>(),
            TypeId::of::<i16>(),
            TypeId::of::<i32>(),
            TypeId::of::<i64>(),
            TypeId::of::<isize>(),
        ];
        if integers.iter().any(|i| t == *i) {
            Kind::Integer
        } else if t == TypeId::of::<f64>() || t == TypeId::of::<f32>() {
            Kind::Number
        } else {
            Kind::Text
        }
    }

    fn wanted(self) -> &'static str {
        match self {
            Kind::Bool => "true or false",
            Kind::Integer => "an integer",
            Kind::Number => "a number",
            Kind::Text => "a string (in quotes)",
        }
    }

    /// A raw value (as clap holds it) written as TOML.
    fn toml(self, raw: &str) -> String {
        match self {
            Kind::Text => quote(raw),
            _ => raw.to_owned(),
        }
    }
}

/// One setting as the server took it.
#[derive(Debug, Clone)]
pub struct Setting {
    /// The key (the long flag).
    pub key: String,
    pub source: Source,
    /// The values (empty: not set).
    pub raw: Vec<String>,
    pub kind: Kind,
    pub repeatable: bool,
}

/// Where each setting came from, and what the file's reading has to say.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// The `--config` file, if any.
    pub file: Option<PathBuf>,
    /// Every setting, in the order of `--help`.
    pub settings: Vec<Setting>,
    /// Warnings to log once logging is set up (e.g. a config file others may change).
    pub warnings: Vec<String>,
}

impl Sources {
    /// Where the setting `key` came from (`Default` for a key not parsed by [`load`]).
    pub fn source(&self, key: &str) -> Source {
        self.settings
            .iter()
            .find(|s| s.key == key)
            .map_or(Source::Default, |s| s.source)
    }
}

/// Why the settings could not be read.
#[derive(Debug)]
pub enum LoadError {
    /// The command line (clap's message, help and version included).
    Usage(clap::Error),
    /// The config file: one line naming the file (and the line and key).
    File(String),
}

/// The settable arguments of the server: every long flag but `--help`, `--version` and
/// `--config`.
fn settable(cmd: &Command) -> impl Iterator<Item = &Arg> {
    cmd.get_arguments()
        .filter(|a| a.get_long().is_some() && !NOT_KEYS.contains(&a.get_id().as_str()))
}

/// Parses the command line (`args` with the program name first), applying `--config`.
pub fn load<I, T>(args: I) -> Result<Cli, LoadError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let mut cmd = Cli::command();
    let mut from_file = BTreeSet::new();
    let mut warnings = Vec::new();
    let path = config_path(&args);
    if let Some(path) = &path {
        let text = read(path).map_err(LoadError::File)?;
        if let Some(w) = world_writable(path) {
            warnings.push(w);
        }
        for (id, values) in parse(path, &text, &cmd).map_err(LoadError::File)? {
            if id == "data_dir" {
                // The store commands' --data-dir is the server's: the file sets both.
                cmd = store_data_dir(cmd, &values[0]);
            }
            cmd = cmd.mut_arg(&id, |a| a.default_values(values));
            from_file.insert(id);
        }
    }
    let matches = cmd
        .try_get_matches_from_mut(&args)
        .map_err(LoadError::Usage)?;
    let mut cli =
        Cli::from_arg_matches(&matches).map_err(|e| LoadError::Usage(e.format(&mut cmd)))?;
    cli.sources = Sources {
        settings: settings(&matches, &from_file),
        file: path,
        warnings,
    };
    Ok(cli)
}

/// The `--config` path, found by clap itself (same tokens, same rules) in a lenient
/// first pass: a command line it refuses is reported by the second pass.
fn config_path(args: &[OsString]) -> Option<PathBuf> {
    Cli::command()
        .ignore_errors(true)
        .try_get_matches_from(args)
        .ok()?
        .get_one::<PathBuf>("config")
        .cloned()
}

/// `data-dir` from the file as the default of `store verify|restore|export --data-dir`.
fn store_data_dir(cmd: Command, value: &str) -> Command {
    let value = value.to_owned();
    cmd.mut_subcommand("store", |store| {
        let names: Vec<String> = store
            .get_subcommands()
            .filter(|c| c.get_arguments().any(|a| a.get_id() == "data_dir"))
            .map(|c| c.get_name().to_owned())
            .collect();
        names.into_iter().fold(store, |store, name| {
            store.mut_subcommand(name, |c| c.mut_arg("data_dir", |a| a.default_value(&value)))
        })
    })
}

/// Every setting with its source, in the order of `--help` (a fresh command: giving an
/// argument a default moves it to the end of its command).
fn settings(matches: &ArgMatches, from_file: &BTreeSet<String>) -> Vec<Setting> {
    let cmd = Cli::command();
    settable(&cmd)
        .map(|arg| {
            let id = arg.get_id().as_str();
            let source = match matches.value_source(id) {
                Some(ValueSource::CommandLine) => Source::CommandLine,
                Some(ValueSource::EnvVariable) => Source::Environment,
                Some(ValueSource::DefaultValue) if from_file.contains(id) => Source::File,
                _ => Source::Default,
            };
            let mut raw: Vec<String> = matches
                .get_raw(id)
                .map(|vs| vs.map(|v| v.to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            // A URL's password is a secret: never listed (`config check`).
            if id == "cluster" {
                raw = raw
                    .iter()
                    .map(|v| chatixia_cluster::redact_url(v))
                    .collect();
            }
            Setting {
                key: arg.get_long().unwrap_or_default().to_owned(),
                source,
                raw,
                kind: Kind::of(arg),
                repeatable: matches!(arg.get_action(), ArgAction::Append),
            }
        })
        .collect()
}

/// Reads the file (at most [`CONFIG_FILE_BYTES_MAX`]) as UTF-8 text.
fn read(path: &Path) -> Result<String, String> {
    let what =
        |e: &dyn std::fmt::Display| format!("cannot read config file {}: {e}", path.display());
    let f = std::fs::File::open(path).map_err(|e| what(&e))?;
    let mut bytes = Vec::new();
    f.take(CONFIG_FILE_BYTES_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| what(&e))?;
    if bytes.len() as u64 > CONFIG_FILE_BYTES_MAX {
        return Err(what(&format!(
            "larger than {CONFIG_FILE_BYTES_MAX} bytes (CONFIG_FILE_BYTES_MAX)"
        )));
    }
    String::from_utf8(bytes).map_err(|e| what(&format!("not UTF-8 text ({e})")))
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// The file's keys as (argument id, values as clap takes them), in the file's order;
/// the first problem is an error naming the file, the line and the key.
fn parse(path: &Path, text: &str, cmd: &Command) -> Result<Vec<(String, Vec<String>)>, String> {
    let file = path.display();
    let table = DeTable::parse(text).map_err(|e| {
        let line = e.span().map_or(1, |s| line_of(text, s.start));
        let message = e.message().trim().replace('\n', "; ");
        format!("{file}:{line}: not valid TOML: {message}")
    })?;
    let mut entries: Vec<_> = table.get_ref().iter().collect();
    entries.sort_by_key(|(k, _)| k.span().start);
    let mut out = Vec::new();
    for (k, v) in entries {
        let key: &str = k.get_ref();
        let line = line_of(text, k.span().start);
        let at = |m: String| format!("{file}:{line}: key `{key}`: {m}");
        if key == "config" {
            return Err(at("a config file cannot name another one".into()));
        }
        if matches!(v.get_ref(), DeValue::Table(_)) {
            return Err(at(
                "is a table; keys are flat, as the flags: `key = value` before any [section]"
                    .into(),
            ));
        }
        let Some(arg) = settable(cmd).find(|a| a.get_long() == Some(key)) else {
            return Err(at(unknown(cmd, key)));
        };
        let values = values(arg, v.get_ref()).map_err(at)?;
        check(key, Kind::of(arg), &values).map_err(at)?;
        out.push((arg.get_id().as_str().to_owned(), values));
    }
    Ok(out)
}

fn unknown(cmd: &Command, key: &str) -> String {
    let dashed = key.replace('_', "-");
    if dashed != key && settable(cmd).any(|a| a.get_long() == Some(&dashed)) {
        return format!("unknown key; keys are spelled as the flags, with dashes: `{dashed}`");
    }
    format!(
        "unknown key (chatixia-core has no flag --{key}; `chatixia-core config example` \
         lists every key)"
    )
}

/// The values of one key as strings for clap, after checking the TOML type.
fn values(arg: &Arg, value: &DeValue<'_>) -> Result<Vec<String>, String> {
    let kind = Kind::of(arg);
    match value {
        DeValue::Array(items) if matches!(arg.get_action(), ArgAction::Append) => items
            .iter()
            .map(|item| scalar(kind, item.get_ref()))
            .collect(),
        DeValue::Array(_) => Err(format!(
            "takes one value, found an array (only a flag that may be repeated takes an \
             array; {} wanted)",
            kind.wanted()
        )),
        v => scalar(kind, v).map(|s| vec![s]),
    }
}

fn scalar(kind: Kind, value: &DeValue<'_>) -> Result<String, String> {
    let integer = |i: &toml::de::DeInteger<'_>| {
        i128::from_str_radix(i.as_str(), i.radix())
            .map(|n| n.to_string())
            .map_err(|e| format!("integer {i} out of range ({e})"))
    };
    match (kind, value) {
        (Kind::Bool, DeValue::Boolean(b)) => Ok(b.to_string()),
        (Kind::Integer | Kind::Number, DeValue::Integer(i)) => integer(i),
        (Kind::Number, DeValue::Float(f)) => Ok(f.as_str().to_owned()),
        (Kind::Text, DeValue::String(s)) => Ok(s.to_string()),
        (kind, found) => Err(format!(
            "wants {}, found {}",
            kind.wanted(),
            match found {
                DeValue::String(_) => "a string",
                DeValue::Integer(_) => "an integer",
                DeValue::Float(_) => "a float",
                DeValue::Boolean(_) => "a boolean",
                DeValue::Datetime(_) => "a date-time",
                DeValue::Array(_) => "an array",
                DeValue::Table(_) => "a table",
            }
        )),
    }
}

/// Checks the values with the flag's own parser (as `--key=value` on a command line).
fn check(key: &str, kind: Kind, values: &[String]) -> Result<(), String> {
    if kind == Kind::Bool {
        return Ok(());
    }
    let argv = std::iter::once("chatixia-core".to_owned())
        .chain(values.iter().map(|v| format!("--{key}={v}")));
    match Cli::command().try_get_matches_from(argv) {
        Ok(_) => Ok(()),
        // A flag that needs another is checked for its value alone; the pairs (such as
        // `--tls-cert` and `--tls-key`) are checked with the whole settings
        // (`Cli::tls_settings`).
        Err(e) if e.kind() == clap::error::ErrorKind::MissingRequiredArgument => Ok(()),
        Err(e) => {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or_default();
            Err(first.trim_start_matches("error: ").to_owned())
        }
    }
}

/// A warning when `path` (a file holding a secret) may be read by every user.
pub fn world_readable(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o004 != 0).then(|| {
        format!(
            "{} holds a secret and every user of this host may read it (mode {:o}); \
             make it readable only by the server's user or group (chmod 640)",
            path.display(),
            mode & 0o7777
        )
    })
}

/// A warning when every user may change the config file (and so the server's settings).
fn world_writable(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o002 != 0).then(|| {
        format!(
            "config file {} may be changed by every user of this host (mode {:o}); \
             chmod o-w it",
            path.display(),
            mode & 0o7777
        )
    })
}

/// `s` as a TOML basic string.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Width of the example's comment lines.
const EXAMPLE_WIDTH: usize = 90;

/// The example config file: every key of a default build, commented out, with what it
/// does, its variable, and its default (or an example where it has none).
pub fn example() -> String {
    let cmd = Cli::command();
    let mut out = String::from(EXAMPLE_HEADER);
    for arg in settable(&cmd) {
        if TEST_SWITCHES.contains(&arg.get_long().unwrap_or_default()) {
            continue;
        }
        let key = arg.get_long().unwrap_or_default();
        let kind = Kind::of(arg);
        let repeatable = matches!(arg.get_action(), ArgAction::Append);
        out.push('\n');
        let mut help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
        if !help.ends_with(['.', ')', ':']) {
            // clap drops the closing period of a one-sentence help.
            help.push('.');
        }
        wrap(&mut out, &help);
        if let Some(var) = arg.get_env() {
            wrap(
                &mut out,
                &format!(
                    "Environment: {} (wins over this file).",
                    var.to_string_lossy()
                ),
            );
        }
        if repeatable {
            wrap(&mut out, "An array: the flag may be repeated.");
        }
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|d| kind.toml(&d.to_string_lossy()))
            .collect();
        let value = if !defaults.is_empty() {
            if repeatable {
                format!("[{}]", defaults.join(", "))
            } else {
                defaults.join(", ")
            }
        } else if kind == Kind::Bool {
            "false".to_owned()
        } else {
            out.push_str("# Unset by default. For example:\n");
            sample(arg, kind, repeatable)
        };
        out.push_str(&format!("#{key} = {value}\n"));
    }
    out
}

const EXAMPLE_HEADER: &str = "\
# chatixia-core configuration (TOML), read with `chatixia-core --config FILE`.
#
# Every key is a flag of `chatixia-core --help` without its leading dashes: `cores = 4`
# is `--cores 4`. For each key the first of these wins: the flag on the command line,
# the flag's environment variable (named below where it has one), this file, the
# default. Each key below is commented out with its default, or an example where it has
# none: remove the `#` to set it. An unknown key, a wrong type or a bad value stops the
# start with the file, the line and the key. `chatixia-core --config FILE config check`
# prints every setting and where it came from.
#
# Keep secrets out of this file: name files that hold them (api-keys-file,
# signaling-secret-file, turn-secret-file) and make those readable only by the server's
# user, or set SIGNALING_SECRET and TURN_SECRET in its environment.
";

fn sample(arg: &Arg, kind: Kind, repeatable: bool) -> String {
    let key = arg.get_long().unwrap_or_default();
    if let Some((_, v)) = SAMPLES.iter().find(|(k, _)| *k == key) {
        return (*v).to_owned();
    }
    let name = arg
        .get_value_names()
        .and_then(|n| n.first())
        .map_or("VALUE".to_owned(), |n| n.to_string());
    let one = match kind {
        Kind::Text => quote(&name),
        _ => "0".to_owned(),
    };
    if repeatable {
        format!("[{one}]")
    } else {
        one
    }
}

/// Appends `text` as `# ` comment lines of at most [`EXAMPLE_WIDTH`] columns.
fn wrap(out: &mut String, text: &str) {
    let mut line = String::from("#");
    for word in text.split_whitespace() {
        if line.len() > 1 && line.len() + 1 + word.len() > EXAMPLE_WIDTH {
            out.push_str(&line);
            out.push('\n');
            line = String::from("#");
        }
        line.push(' ');
        line.push_str(word);
    }
    if line.len() > 1 {
        out.push_str(&line);
        out.push('\n');
    }
}

/// `chatixia-core config check`: every setting, its value and where it came from, as
/// TOML (a setting that is not set is a comment).
pub fn report(sources: &Sources) -> String {
    let mut out = match &sources.file {
        Some(p) => format!("# config file: {}\n", p.display()),
        None => "# no config file\n".to_owned(),
    };
    for s in &sources.settings {
        let values: Vec<String> = s.raw.iter().map(|v| s.kind.toml(v)).collect();
        let line = match (values.len(), s.repeatable) {
            (0, _) => format!("# {} is not set", s.key),
            (_, true) => format!("{} = [{}]", s.key, values.join(", ")),
            (_, false) => format!("{} = {}", s.key, values.join(", ")),
        };
        out.push_str(&format!("{line}  # {}\n", s.source.as_str()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch file removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str, text: &str) -> Scratch {
            let dir = std::env::temp_dir().join(format!(
                "chatixia-config-{}-{name}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .subsec_nanos()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("chatixia-core.toml");
            std::fs::write(&path, text).unwrap();
            Scratch(path)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(self.0.parent().unwrap());
        }
    }

    fn load_text(text: &str, extra: &[&str]) -> Result<Cli, LoadError> {
        let f = Scratch::new("t", text);
        let mut args = vec!["chatixia-core".to_owned(), "--config".to_owned()];
        args.push(f.0.display().to_string());
        args.extend(extra.iter().map(|s| s.to_string()));
        load(args)
    }

    fn file_error(text: &str) -> String {
        match load_text(text, &[]) {
            Err(LoadError::File(m)) => m,
            Err(LoadError::Usage(e)) => panic!("usage error instead of a file error: {e}"),
            Ok(_) => panic!("accepted: {text}"),
        }
    }

    /// The keys of a default build (the example's).
    fn keys() -> Vec<String> {
        let cmd = Cli::command();
        settable(&cmd)
            .filter(|a| !TEST_SWITCHES.contains(&a.get_long().unwrap_or_default()))
            .map(|a| a.get_long().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn values_of_every_type_are_applied() {
        let cli = load_text(
            "cores = 3\nshutdown-timeout = 2.5\nhttp-idle-timeout = 30\n\
             require-agent-auth = true\nlisten = \"127.0.0.1:9\"\n\
             stun-url = [\"stun:a.example:1\", \"stun:b.example:2\"]\n\
             pair-code-format = \"digits6\"\nws-message-max = 0x1000\n",
            &[],
        )
        .unwrap();
        assert_eq!(cli.cores, Some(3));
        assert_eq!(cli.shutdown_timeout, 2.5);
        assert_eq!(cli.http_idle_timeout, 30.0);
        assert!(cli.require_agent_auth);
        assert_eq!(cli.listen, Some("127.0.0.1:9".parse().unwrap()));
        assert_eq!(cli.stun_urls, ["stun:a.example:1", "stun:b.example:2"]);
        assert_eq!(
            cli.store.pair_code_format,
            crate::pairing::CodeFormat::Digits6
        );
        assert_eq!(cli.ws_message_max, 4096);
        assert_eq!(cli.sources.source("cores"), Source::File);
        assert_eq!(cli.sources.source("ws-idle-timeout"), Source::Default);
    }

    #[test]
    fn the_command_line_wins_over_the_file() {
        let cli = load_text(
            "cores = 3\nstun-url = [\"stun:file.example:1\"]\n",
            &["--cores", "5", "--stun-url", "stun:flag.example:2"],
        )
        .unwrap();
        assert_eq!(cli.cores, Some(5));
        assert_eq!(cli.stun_urls, ["stun:flag.example:2"]);
        assert_eq!(cli.sources.source("cores"), Source::CommandLine);
    }

    #[test]
    fn bad_files_are_refused_naming_file_line_and_key() {
        let m = file_error("cores = 2\n\ncorez = 4\n");
        assert!(m.contains(":3: key `corez`: unknown key"), "{m}");
        assert!(m.contains("chatixia-core.toml"), "{m}");
        let m = file_error("data_dir = \"x\"\n");
        assert!(m.contains("with dashes: `data-dir`"), "{m}");
        let m = file_error("\ncores = \"four\"\n");
        assert!(
            m.contains(":2: key `cores`: wants an integer, found a string"),
            "{m}"
        );
        let m = file_error("require-agent-auth = \"yes\"\n");
        assert!(m.contains("wants true or false, found a string"), "{m}");
        let m = file_error("listen = 8080\n");
        assert!(
            m.contains("wants a string (in quotes), found an integer"),
            "{m}"
        );
        let m = file_error("listen = \"nowhere\"\n");
        assert!(m.contains("key `listen`: invalid value 'nowhere'"), "{m}");
        let m = file_error("cores = [1, 2]\n");
        assert!(m.contains("takes one value, found an array"), "{m}");
        let m = file_error("anonymous-share-percent = 101\n");
        assert!(
            m.contains("key `anonymous-share-percent`: invalid value"),
            "{m}"
        );
        let m = file_error("[store]\ntask-ttl-max = 3\n");
        assert!(m.contains("key `store`: is a table"), "{m}");
        let m = file_error("cores = 2\ncores = 3\n");
        assert!(m.contains(":2: not valid TOML"), "{m}");
        let m = file_error("config = \"other.toml\"\n");
        assert!(m.contains("cannot name another"), "{m}");
        assert!(!m.contains('\n'), "one line: {m}");
    }

    #[test]
    fn example_has_every_key_with_its_default_and_loads_uncommented() {
        let example = example();
        for key in keys() {
            assert!(
                example
                    .lines()
                    .any(|l| l.starts_with(&format!("#{key} = "))),
                "the example has no entry for --{key}"
            );
        }
        // The example parses, and uncommented it loads: every default and sample is a
        // value the flag accepts, and the defaults are the built-in ones.
        assert!(DeTable::parse(&example).is_ok());
        let uncommented: String = example
            .lines()
            .map(|l| match l.strip_prefix('#') {
                Some(rest) if rest.starts_with(|c: char| c.is_ascii_lowercase()) => rest,
                _ => l,
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let cli = load_text(&uncommented, &[]).unwrap_or_else(|e| panic!("{e:?}"));
        let plain = load(["chatixia-core"]).unwrap();
        for (with_file, built_in) in cli.sources.settings.iter().zip(&plain.sources.settings) {
            assert_eq!(with_file.key, built_in.key);
            if built_in.source == Source::Default
                && !built_in.raw.is_empty()
                && !TEST_SWITCHES.contains(&with_file.key.as_str())
            {
                assert_eq!(with_file.source, Source::File, "{}", with_file.key);
                assert_eq!(with_file.raw, built_in.raw, "default of {}", with_file.key);
            }
        }
    }

    #[test]
    fn the_committed_example_is_the_generated_one() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/chatixia-core.toml");
        let committed = std::fs::read_to_string(&path).unwrap();
        assert!(
            committed == example(),
            "{} is out of date: regenerate it with \
             `cargo run -p chatixia-core -- config example > packaging/chatixia-core.toml`",
            path.display()
        );
    }
}
