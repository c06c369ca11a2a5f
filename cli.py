"""cli.py: what every entry point shares: flags from a config dataclass, one error boundary,
peak memory.

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
from pathlib import Path

import torch


def field_help(cls) -> dict:
    """{field: its trailing comment} read from the dataclass's source."""
    return dict(re.findall(r"^\s+(\w+):[^#\n]*#\s*(.+?)\s*$", inspect.getsource(cls), re.M))


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
    if presets:
        ap.add_argument("--preset", choices=sorted(presets), default="default",
                        help="named group of defaults (default: default)")
    ap.add_argument("--config", metavar="JSON", help="file of field values; flags override it")
    helps = field_help(cls)
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        shown = default if default != "" else '""'
        if presets and f.name in presets["default"]:
            shown = f"{presets['default'][f.name]} in the default preset, {shown} without"
        kind = type(default)
        kw = dict(type=_bool, nargs="?", const=True) if kind is bool else dict(type=kind)
        if kind is list:                  # list fields: one or more values of the default's type
            kw = dict(type=type(default[0]) if default else str, nargs="+")
        ap.add_argument(f"--{f.name}", default=None, metavar=kw["type"].__name__.upper(),
                        help=f"{helps.get(f.name, '')} (default: {shown})", **kw)
    return ap


def parse(cls, argv=None, description="", presets=None, **extra):
    """cls(**values) from defaults < preset < --config < flags; returns (config, other args)
    when `extra` adds arguments that are not fields, else the config."""
    args = vars(parser(cls, description, presets, **extra).parse_args(argv))
    values = dict(presets[args.pop("preset")]) if presets else {}
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
