"""What a new user reads: the README's and docs/' commands name real options, links lead somewhere, every option has
help, --help is instant. (tests/test_docs.py runs the code blocks and checks the generated pages.)"""
import re
from pathlib import Path

import click
import pytest

from omniart.extract.cli import main as omni_extract
from omniart.pipeline.cli import main as omni_heads

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README] + sorted(DOCS.glob("*.md"))
GENERATED = {DOCS / "commands.md", DOCS / "benchmarks.md"}  # docs/make_docs.py writes them; test_docs.py checks them
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
SHELL = ("", "bash", "sh", "shell")
# programs a shell block may run besides omniart's two CLIs
OTHER_PROGRAMS = {"make", "source", "pip", "python", "torchrun", "sbatch", "cp"}
# options of programs that are not omniart's (torchrun's, pip's)
OTHER_OPTIONS = {"--standalone", "--nproc-per-node"}


def code_blocks(page):
    """(language, text, line number of the opening fence) of each fenced block of a page."""
    text = page.read_text(encoding="utf-8")
    return [(match.group(1), match.group(2), text.count("\n", 0, match.start()) + 1)
            for match in re.finditer(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M)]


def shell_lines(block):
    """The lines of a shell block, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [line for line in (line.split("#", 1)[0].strip() for line in joined.splitlines()
                              if not line.lstrip().startswith("#")) if line]


def page_commands(pages=PAGES):
    """(page:line, program, text after the program) of each omni-extract / omni-heads invocation in shell blocks."""
    commands = []
    for page in pages:
        for language, block, line in code_blocks(page):
            if language not in SHELL:
                continue
            for command in shell_lines(block):
                match = re.search(r"(omni-extract|omni-heads|-m omniart\.extract\.cli)\b(.*)", command)
                if match:
                    program = "omni-extract" if "extract" in match.group(1) else "omni-heads"
                    commands.append((f"{page.relative_to(ROOT)}:{line}", program, match.group(2)))
    return commands


def resolve(program, rest):
    """The click command a line runs, and the text after the command name."""
    if program == "omni-extract":
        return omni_extract, rest
    name, _, rest = rest.strip().partition(" ")
    command = omni_heads.commands.get(name)
    assert command is not None, f"the docs run `omni-heads {name}`, which is not a command"
    return command, rest


def test_readme_has_commands_of_every_phase():
    commands = page_commands([README])
    subcommands = {resolve(program, rest)[0].name for _, program, rest in commands}
    assert {"labels", "fit", "evaluate", "predict", "embed", "sweep", "neighbors", "report"} <= subcommands
    assert sum(program == "omni-extract" for _, program, _ in commands) >= 4


def test_readme_is_short():
    lines = len(README.read_text(encoding="utf-8").splitlines())
    assert lines <= 300, f"README.md has {lines} lines; move reference material to docs/"


@pytest.mark.parametrize("where, program, rest", page_commands(), ids=[where for where, _, _ in page_commands()])
def test_command_options_exist(where, program, rest):
    command, rest = resolve(program, rest)
    known = {opt: param for param in command.params for opt in param.opts + param.secondary_opts}
    for option in OPTION.findall(rest):
        assert option in known, f"{where} shows `{option}` for {command.name}, which has no such option"
        param = known[option]
        if isinstance(param.type, click.Choice):
            value = re.search(re.escape(option) + r"[ =](\w[\w.-]*)(?![|\w])", rest)
            if value and "|" not in rest[value.start():value.end() + 1]:
                assert value.group(1) in param.type.choices, f"{where}: `{option} {value.group(1)}` is not a choice"


@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_shell_blocks_run_only_known_programs(page):
    for language, block, line in code_blocks(page):
        if language in SHELL:
            for command in shell_lines(block):
                program = command.split()[0]
                assert program in OTHER_PROGRAMS | {"omni-extract", "omni-heads"}, \
                    f"{page.name}:{line}: `{program}` is not a program a reader has"


def all_options():
    """Every option of every command, --help included (click adds it outside `params`)."""
    return {"--help"} | {opt for _, command in all_commands() for param in command.params
                         for opt in param.opts + param.secondary_opts}


@pytest.mark.parametrize("page", [page for page in PAGES if page not in GENERATED],
                         ids=[page.name for page in PAGES if page not in GENERATED])
def test_every_option_the_text_names_exists(page):
    """Options in prose and inline code, not only in code blocks: a renamed option leaves no stale mention."""
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.S | re.M)
    unknown = sorted(set(OPTION.findall(text)) - all_options() - OTHER_OPTIONS)
    assert not unknown, f"{page.name} names {unknown}, which no omni-extract / omni-heads command has"


@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_relative_links_lead_to_files(page):
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
        if "://" not in target:
            assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"


def test_every_docs_page_is_linked_from_the_readme():
    readme = README.read_text(encoding="utf-8")
    unlinked = [page.name for page in DOCS.glob("*.md") if f"docs/{page.name}" not in readme]
    assert not unlinked, f"README.md links to no {unlinked}"


def all_commands():
    """Every command a user can run, with its name as typed."""
    commands = [("omni-extract", omni_extract)]
    commands += [(f"omni-heads {name}", command) for name, command in sorted(omni_heads.commands.items())]
    return commands


@pytest.mark.parametrize("name, command", all_commands(), ids=[name for name, _ in all_commands()])
def test_every_option_has_a_one_line_explanation(name, command):
    undocumented = [param.opts[0] for param in command.params  # hidden: an old spelling kept a release
                    if isinstance(param, click.Option) and not param.hidden and not (param.help or "").strip()]
    assert not undocumented, f"{name} --help lists {undocumented} without an explanation"
    assert (command.help or "").strip(), f"{name} has no help text"


def test_help_is_instant_because_torch_is_not_imported():
    import subprocess
    import sys

    code = "import sys, omniart.pipeline.cli, omniart.extract.cli; print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
