//! Parsing: clap plus llama.cpp's single-dash multi-letter spellings; the exit codes;
//! logging; the value types of the layer flags.

use std::ffi::{OsStr, OsString};
use std::str::FromStr;

/// llama.cpp single-dash spellings and the long flag each one stands for.
pub type Spellings = &'static [(&'static str, &'static str)];

/// Parses this process's command line into `P`, honouring `spellings`; on `--help` or a
/// bad command line it prints and exits (see the crate documentation).
pub fn parse<P: clap::Parser>(spellings: Spellings) -> P {
    match try_parse_from(std::env::args_os(), spellings) {
        Ok(parsed) => parsed,
        Err(err) => exit_with(P::command().get_name(), &err),
    }
}

/// [`parse`] without the exit: for tests, and for callers that report errors their way.
pub fn try_parse_from<P: clap::Parser>(
    argv: impl IntoIterator<Item = impl Into<OsString>>,
    spellings: Spellings,
) -> Result<P, clap::Error> {
    let mut command = with_spellings_listed(P::command(), spellings);
    let mut matches = command.try_get_matches_from_mut(expand_spellings(argv, spellings))?;
    P::from_arg_matches_mut(&mut matches).map_err(|e| e.format(&mut command))
}

/// `command` with its llama.cpp spellings listed after the help text. In debug builds it
/// also checks that every spelling names a long flag the command has, so a renamed flag
/// cannot leave a dead spelling behind (the `--help` test runs debug builds).
fn with_spellings_listed(command: clap::Command, spellings: Spellings) -> clap::Command {
    if spellings.is_empty() {
        return command;
    }
    debug_assert!(
        spellings.iter().all(|(_, long)| command
            .get_arguments()
            .any(|a| a.get_long() == long.strip_prefix("--"))),
        "a llama.cpp spelling of {} names a flag it does not have",
        command.get_name()
    );
    let listed: Vec<String> = spellings
        .iter()
        .map(|(short, long)| format!("{short} = {long}"))
        .collect();
    command.after_help(format!("llama.cpp spellings: {}", listed.join(", ")))
}

/// The command line with every llama.cpp spelling replaced by its long flag, up to a
/// `--` (after which everything is a value).
pub fn expand_spellings(
    argv: impl IntoIterator<Item = impl Into<OsString>>,
    spellings: Spellings,
) -> Vec<OsString> {
    let mut after_separator = false;
    argv.into_iter()
        .map(Into::into)
        .map(|arg| {
            if after_separator {
                return arg;
            }
            if arg == "--" {
                after_separator = true;
                return arg;
            }
            spellings
                .iter()
                .find(|(short, _)| OsStr::new(short) == arg)
                .map_or(arg, |(_, long)| OsString::from(long))
        })
        .collect()
}

/// Help and version go to stdout with exit 0; every other error is one line on stderr
/// and exit 2.
fn exit_with(program: &str, err: &clap::Error) -> ! {
    use clap::error::ErrorKind;
    if matches!(
        err.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
    ) {
        err.exit();
    }
    usage_error(program, &one_line(err))
}

/// Reports a bad command line the way [`parse`] does, for checks clap cannot express:
/// `PROGRAM: message (see --help)` on stderr, exit 2.
pub fn usage_error(program: &str, message: &str) -> ! {
    eprintln!("{program}: {message} (see --help)");
    std::process::exit(2);
}

/// clap's message on one line: its first paragraph (which for a missing argument names
/// the argument on the next line) without the `error:` prefix, tips and usage block.
pub fn one_line(err: &clap::Error) -> String {
    let rendered = err.render().to_string();
    let message: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .take_while(|line| !line.is_empty())
        .collect();
    let message = message.join(" ");
    message
        .strip_prefix("error: ")
        .unwrap_or(&message)
        .to_owned()
}

/// Sends the `log` crate's records to stderr: our own warnings (e.g. MoE options on a
/// dense model) always; with `verbose`, llama.cpp's log and everything down to debug.
/// `RUST_LOG`, when set, replaces both (`RUST_LOG=llama_cpp=info` shows llama.cpp only).
pub fn init_logging(verbose: bool) {
    let mut builder = if std::env::var_os("RUST_LOG").is_some() {
        env_logger::Builder::from_default_env()
    } else {
        let mut builder = env_logger::Builder::new();
        if verbose {
            builder.filter_level(log::LevelFilter::Debug);
        } else {
            builder
                .filter_level(log::LevelFilter::Off)
                .filter_module("llama_cpp_moe", log::LevelFilter::Warn);
        }
        builder
    };
    // A second call (tests, or a program that calls it twice) keeps the first logger.
    let _ = builder.format_timestamp(None).try_init();
}

/// `-ngl`: a layer count or every layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuLayers {
    /// `-ngl all`.
    All,
    /// `-ngl N`.
    Count(u32),
}

impl GpuLayers {
    /// llama.cpp's `n_gpu_layers` value: `-1` for every layer.
    pub fn to_n_gpu_layers(self) -> Result<i32, String> {
        match self {
            GpuLayers::All => Ok(-1),
            GpuLayers::Count(n) => i32::try_from(n).map_err(|_| format!("-ngl {n} is too large")),
        }
    }
}

impl FromStr for GpuLayers {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "all" {
            return Ok(GpuLayers::All);
        }
        s.parse()
            .map(GpuLayers::Count)
            .map_err(|_| format!("expected a layer count or `all`, got {s:?}"))
    }
}

/// A layer list as given on the command line (`36-47`, `0,2,4-6`) and its layers,
/// sorted and de-duplicated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerList {
    /// The list as the user wrote it, for labels.
    pub spec: String,
    /// The layer indices.
    pub layers: Vec<u32>,
}

impl FromStr for LayerList {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid layer list {s:?}: expected e.g. 36-47 or 0,2,4-6");
        let mut layers = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.split_once('-') {
                Some((first, last)) => {
                    let first: u32 = first.trim().parse().map_err(|_| bad())?;
                    let last: u32 = last.trim().parse().map_err(|_| bad())?;
                    if first > last {
                        return Err(bad());
                    }
                    layers.extend(first..=last);
                }
                None => layers.push(part.parse().map_err(|_| bad())?),
            }
        }
        if layers.is_empty() {
            return Err(format!("empty layer list {s:?}"));
        }
        layers.sort_unstable();
        layers.dedup();
        Ok(LayerList {
            spec: s.to_owned(),
            layers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser, Debug)]
    #[command(name = "demo")]
    struct Demo {
        #[arg(long = "n-gpu-layers")]
        ngl: Option<GpuLayers>,
        #[arg(short = 'p', long)]
        prompt: Option<String>,
        rest: Vec<String>,
    }

    const SPELLINGS: Spellings = &[("-ngl", "--n-gpu-layers")];

    fn demo(line: &str) -> Result<Demo, clap::Error> {
        try_parse_from(
            std::iter::once("demo").chain(line.split_whitespace()),
            SPELLINGS,
        )
    }

    #[test]
    fn llama_cpp_spellings_become_long_flags_up_to_the_separator() {
        let d = demo("-ngl all -- -ngl").unwrap();
        assert_eq!(d.ngl, Some(GpuLayers::All));
        assert_eq!(d.rest, ["-ngl"]);
        assert_eq!(
            demo("-ngl 7").unwrap().ngl.unwrap().to_n_gpu_layers(),
            Ok(7)
        );
        assert_eq!(GpuLayers::All.to_n_gpu_layers(), Ok(-1));
    }

    #[test]
    fn errors_read_as_one_line_and_help_lists_the_spellings() {
        let err = demo("-ngl lots").unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let line = one_line(&err);
        assert!(
            line.contains("--n-gpu-layers") && line.contains("lots"),
            "{line}"
        );
        assert!(one_line(&demo("--frobnicate").unwrap_err()).contains("--frobnicate"));
        let missing = clap::Command::new("demo")
            .arg(clap::Arg::new("model").long("model").required(true))
            .try_get_matches_from(["demo"])
            .unwrap_err();
        assert_eq!(
            one_line(&missing),
            "the following required arguments were not provided: --model <model>"
        );

        let help = demo("--help").unwrap_err();
        assert_eq!(help.exit_code(), 0);
        assert!(help
            .render()
            .to_string()
            .contains("llama.cpp spellings: -ngl = --n-gpu-layers"));
    }

    #[test]
    fn layer_lists() {
        let layers = |s: &str| s.parse::<LayerList>().map(|l| l.layers);
        assert_eq!(layers("36-39").unwrap(), vec![36, 37, 38, 39]);
        assert_eq!(layers("4,0,2-3,2").unwrap(), vec![0, 2, 3, 4]);
        assert_eq!("4,0".parse::<LayerList>().unwrap().spec, "4,0");
        assert!(layers("5-2").is_err());
        assert!(layers("x").is_err());
        assert!(layers(",").is_err());
    }
}
