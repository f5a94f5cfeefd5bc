"""`roadside completion bash|zsh|tcsh|fish`: a shell completion script made by shtab from the
argparse tree.

Every subcommand, option and choice the parser knows is in the script, so it can never list
a command that does not exist. Options carry what their value is (commands/options.py, and
`_mark` below for the rest): files for --image, --config, --secret-file, --db and every other
FILE or Path, directories for --report, --dir and every DIR, the attached USB serial devices
for PORT and --port (`roadside nodes --names`, run when that TAB is pressed), the shipped
board names (or a .toml file) for --board. The script is static: no
Python starts on TAB but for a port.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import shtab

from ..install import boards

SHELLS = ("bash", "zsh", "tcsh", "fish")

EXAMPLES = """examples:
  roadside completion bash > ~/.local/share/bash-completion/completions/roadside
  eval "$(roadside completion bash)"            this shell only
  roadside completion zsh > ~/.zfunc/_roadside  (a directory in $fpath; then compinit)
  roadside completion fish > ~/.config/fish/completions/roadside.fish
  roadside completion tcsh > ~/.roadside.tcsh; echo 'source ~/.roadside.tcsh' >> ~/.tcshrc"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "completion",
        help="print a shell completion script (bash, zsh, tcsh, fish)",
        description="Print a completion script for bash, zsh, tcsh or fish, generated from "
                    "the command line's own parser (by shtab): commands, options, choices, "
                    "files, board names and the attached serial ports.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("shell", choices=SHELLS)
    p.set_defaults(handler=handle)


def board_names() -> list[str]:
    return sorted(b.stem for b in boards.shipped_boards())


def boards_or_toml(names: list[str]) -> dict[str, Any]:
    """shtab completer for --board: a shipped board's name, or a board .toml file."""
    words = " ".join(names)
    return {
        "bash": "_roadside_boards",
        # colons escaped (the action sits in an _arguments spec, which colons split); the leading
        # space: _arguments adds no compadd options to the call
        "zsh": f" _alternative 'boards\\:board\\:({words})' 'files\\:file\\:_files -g \\*.toml'",
        "tcsh": f"({words})",
        "fish": f"{words} (__fish_complete_suffix .toml)",
        "preamble": {"bash": (
            "_roadside_boards() {\n"
            f'  compgen -W "{words}" -- "$1"\n'
            "  compgen -f -X '!*.toml' -- \"$1\"\n"
            '  compgen -d -- "$1"\n'
            "}\n")},
    }


def _mark(parser: argparse.ArgumentParser, boards_completer: dict[str, Any]) -> None:
    """What shtab should complete for the values the commands did not mark themselves
    (commands/options.py): board names for --board; a directory for a DIR; a file for a
    FILE or a Path (--config, --db, --cddl, a --bundle to come), so a new option of that
    kind completes files without anyone remembering to say so."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _mark(child, boards_completer)
            continue
        if hasattr(action, "complete") or action.choices or action.nargs == 0:
            continue
        if "--board" in action.option_strings:
            action.complete = boards_completer  # type: ignore[attr-defined]  # read by shtab
        elif str(action.metavar or "").endswith("DIR"):
            action.complete = shtab.DIRECTORY  # type: ignore[attr-defined]
        elif action.metavar == "FILE" or action.type is Path:
            action.complete = shtab.FILE  # type: ignore[attr-defined]


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script for `shell` (prog name `roadside`)."""
    _mark(parser, boards_or_toml(board_names()))
    return str(shtab.complete(parser, shell=shell))


def handle(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args.root_parser  # set by cli.build_parser
    print(script(parser, args.shell), end="")
    return 0
