"""What a new user reads: the README's commands name real options, every option has help, --help is instant."""
import re
from pathlib import Path

import click
import pytest

from omniart.extract.cli import main as omni_extract
from omniart.pipeline.cli import main as omni_heads

README = Path(__file__).resolve().parents[1] / "README.md"
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def readme_commands():
    """Each omni-extract / omni-heads invocation in the README's code blocks, continuation lines joined."""
    blocks = re.findall(r"^```(\w*)\n(.*?)^```", README.read_text(), flags=re.S | re.M)
    commands = []
    for language, block in blocks:
        if language not in ("", "bash"):
            continue
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split("#", 1)[0] if not line.lstrip().startswith("#!") else ""
            match = re.search(r"(omni-extract|omni-heads|-m omniart\.extract\.cli)\b(.*)", line)
            if match:
                commands.append(("omni-extract" if "extract" in match.group(1) else "omni-heads", match.group(2)))
    return commands


def resolve(program, rest):
    """The click command a README line runs, and the text after the command name."""
    if program == "omni-extract":
        return omni_extract, rest
    name, _, rest = rest.strip().partition(" ")
    command = omni_heads.commands.get(name)
    assert command is not None, f"README runs `omni-heads {name}`, which is not a command"
    return command, rest


def test_readme_has_commands_of_every_phase():
    commands = readme_commands()
    subcommands = {resolve(program, rest)[0].name for program, rest in commands}
    assert {"labels", "fit", "evaluate", "predict", "embed", "sweep", "neighbors", "run"} <= subcommands
    assert sum(program == "omni-extract" for program, _ in commands) >= 4


@pytest.mark.parametrize("program, rest", readme_commands())
def test_readme_command_options_exist(program, rest):
    command, rest = resolve(program, rest)
    known = {opt: param for param in command.params for opt in param.opts + param.secondary_opts}
    for option in OPTION.findall(rest):
        assert option in known, f"README shows `{option}` for {command.name}, which has no such option"
        param = known[option]
        if isinstance(param.type, click.Choice):
            value = re.search(re.escape(option) + r"[ =](\w[\w.-]*)(?![|\w])", rest)
            if value and "|" not in rest[value.start():value.end() + 1]:
                assert value.group(1) in param.type.choices, f"README: `{option} {value.group(1)}` is not a choice"


def all_commands():
    """Every command a user can run, with its name as typed."""
    commands = [("omni-extract", omni_extract)]
    commands += [(f"omni-heads {name}", command) for name, command in sorted(omni_heads.commands.items())]
    return commands


@pytest.mark.parametrize("name, command", all_commands(), ids=[name for name, _ in all_commands()])
def test_every_option_has_a_one_line_explanation(name, command):
    undocumented = [param.opts[0] for param in command.params
                    if isinstance(param, click.Option) and not (param.help or "").strip()]
    assert not undocumented, f"{name} --help lists {undocumented} without an explanation"
    assert (command.help or "").strip(), f"{name} has no help text"


def test_help_is_instant_because_torch_is_not_imported():
    import subprocess
    import sys

    code = "import sys, omniart.pipeline.cli, omniart.extract.cli; print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
