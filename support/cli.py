"""cli.py: what every entry point shares: flags from a config dataclass, one error boundary,
progress lines, peak memory.

Every entry point (train.py, efx.py, eval.py, data.py) declares its options as a dataclass
whose fields carry a trailing comment; that comment is the field's --help text. Precedence:
dataclass defaults < --preset < --config run.json < flags. Flags are the field names
(`--lora_r 8`); booleans take `--eval`, `--eval true` or `--eval false`.

    cfg = cli.parse(TrainConfig, argv, "Fine-tune ...", presets=PRESETS)
    cli.main("train.py", lambda: run(cli.parse(...)))   # expected errors: one line, exit 1
"""
import argparse
import dataclasses
import inspect
import json
import re
import resource
import sys
import time
import typing
from pathlib import Path

import torch


def field_help(cls) -> dict:
    """{field: its trailing comment} read from the dataclass's source and its bases' (a
    field the class declares again takes the class's comment)."""
    helps = {}
    for c in reversed([c for c in cls.__mro__ if dataclasses.is_dataclass(c)]):
        helps.update(re.findall(r"^\s+(\w+):[^#\n]*#\s*(.+?)\s*$", inspect.getsource(c), re.M))
    return helps


def _bool(s):
    if s.lower() in ("1", "true", "yes"):
        return True
    if s.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {s!r}")


def parser(cls, description, presets=None, **extra) -> argparse.ArgumentParser:
    """An ArgumentParser with --preset (if presets), --config and one flag per field of cls;
    `extra`: name -> add_argument kwargs of arguments that are not fields (e.g. positionals)."""
    ap = argparse.ArgumentParser(description=description,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, kw in extra.items():
        ap.add_argument(name, **kw)
    helps = field_help(cls)
    if presets:           # a `preset` field of cls records which one the run used
        ap.add_argument("--preset", choices=sorted(presets), default="default",
                        help=f"{helps.get('preset', 'named group of defaults')} (default: default)")
    ap.add_argument("--config", metavar="JSON", help="file of field values; flags override it")
    for f in (f for f in dataclasses.fields(cls) if not (presets and f.name == "preset")):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        shown = default if default != "" else '""'
        if presets and f.name in presets["default"] and presets["default"][f.name] != default:
            shown = f"{presets['default'][f.name]} in the default preset, {shown} without"
        kind = type(default)
        kw = dict(type=_bool, nargs="?", const=True) if kind is bool else dict(type=kind)
        if kind is list:                  # list fields: one or more values of list[T]'s or the default's type
            kw = dict(type=(typing.get_args(f.type) or [type(default[0]) if default else str])[0], nargs="+")
        ap.add_argument(f"--{f.name}", default=None, metavar=kw["type"].__name__.upper(),
                        help=f"{helps.get(f.name, '')} (default: {shown})".replace("%", "%%"), **kw)
    return ap


def parse(cls, argv=None, description="", presets=None, **extra):
    """cls(**values) from defaults < preset < --config < flags; returns (config, other args)
    when `extra` adds arguments that are not fields, else the config."""
    args = vars(parser(cls, description, presets, **extra).parse_args(argv))
    values = dict(presets[args["preset"]]) if presets else {}
    if presets and "preset" in {f.name for f in dataclasses.fields(cls)}:
        values["preset"] = args["preset"]
    args.pop("preset", None)
    path = args.pop("config")
    if path:
        try:
            values.update(json.loads(Path(path).read_text()))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
    names = {f.name for f in dataclasses.fields(cls)}
    values.update({k: v for k, v in args.items() if k in names and v is not None})
    cfg = make(cls, values)
    return (cfg, {k: v for k, v in args.items() if k not in names}) if extra else cfg


def make(cls, values):
    """cls(**values) with unknown fields named in the error (a typo in --config)."""
    unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"config: unknown field(s) {sorted(unknown)}")
    return cls(**values)


def check_fresh(path, overwrite, *names):
    """Refuse (ValueError) to write where a finished run is, unless overwrite: path is a file
    that exists, or a folder holding one of `names`."""
    path = Path(path)
    found = [path] if path.is_file() else [path / n for n in names if (path / n).exists()]
    if found and not overwrite:
        raise ValueError(f"{found[0]} exists (an earlier run's output): choose another output "
                         "path, or pass --overwrite to replace it")


def main(prog, fn):
    """The error boundary of an entry point: run fn(); an expected error (bad value, missing,
    unreadable or damaged file, NaN / inf) ends the process with one line `prog: error: ...`
    and exit status 1, no traceback. Usage errors are argparse's (exit status 2)."""
    try:
        return fn()
    except (ValueError, OSError, FloatingPointError, RuntimeError) as e:
        sys.exit(f"{prog}: error: {e}")


def reset_peak_memory(device):
    """Start the peak count again: CUDA's allocator statistics; on Linux the process's peak
    resident set (writing "5" to /proc/self/clear_refs resets VmHWM)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass


def peak_memory(device) -> tuple:
    """(GiB, kind): CUDA max allocated; CPU peak resident set (VmHWM, else ru_maxrss)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30, "cuda max allocated"
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20, "process peak RSS"
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "process peak RSS"


def _hms(s):
    s = int(s)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class Progress:
    """One progress line for a loop of `total` steps: `what i/total, rate, elapsed, ETA, note`.
    On a terminal (log is print, stdout a TTY) the line is rewritten in place; into a log
    (a file, a pipe, or any other log function) a line goes at most every `every` seconds.
    update(..., keep=True) makes a line permanent in both; the last step always is; end()
    finishes a half-written terminal line before other output (a loop left early).

        bar = cli.Progress("[eval] ppl", n_windows, "window")
        for i in range(n_windows):
            ...
            bar.update(i + 1, f"ppl {ppl:.2f}")
    """

    def __init__(self, what, total, unit="it", log=print, every=30.0, start=0):
        self.what, self.total, self.unit, self.log, self.every = what, total, unit, log, every
        self.tty, self.open, self.start = log is print and sys.stdout.isatty(), False, start
        self.t0 = self.shown = time.time()

    def line(self, i, note=""):
        el = time.time() - self.t0
        rate = (i - self.start) / el if el > 0 else 0.0      # start: steps done before (--resume)
        speed = f"{rate:.2f} {self.unit}/s" if rate >= 1 or rate == 0 else f"{1 / rate:.2f} s/{self.unit}"
        eta = f", ETA {_hms((self.total - i) / rate)}" if 0 < rate and i < self.total else ""
        return (f"{self.what} {i}/{self.total} ({speed}, {_hms(el)} elapsed{eta})"
                f"{'  ' + note if note else ''}")

    def update(self, i, note="", keep=False):
        now, last = time.time(), i >= self.total
        if self.tty:
            if keep or last or now - self.shown >= 0.2:
                end = "\n" if keep or last else ""
                sys.stdout.write("\r\033[K" + self.line(i, note) + end)
                sys.stdout.flush()
                self.shown, self.open = now, not end
        elif keep or last or now - self.shown >= self.every:
            self.log(self.line(i, note))
            if self.log is print:
                sys.stdout.flush()          # a log file sees the line now, not at exit
            self.shown = now

    def end(self):
        if self.open:
            sys.stdout.write("\n")
            self.open = False


def prune_reporting(log=print):
    """efx.prune's reporting on the command line, as keywords: prune(..., **prune_reporting())
    gives a progress line over the blocks, ended before any other line the call logs."""
    bar = None

    def on_block(i, n, block):
        nonlocal bar
        bar = bar or Progress("efx.prune: block", n, "block", log)
        bar.update(i + 1, f"sparsity {block['sparsity']:.4f}")

    def say(line):
        if bar is not None:
            bar.end()
        log(line)
    return {"log": say, "on_block": on_block}
