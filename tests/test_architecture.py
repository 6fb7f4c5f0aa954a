"""Project rules that a reviewer would otherwise have to remember."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from bot.i18n import Translator

ROOT = Path(__file__).resolve().parents[1]
PLATFORM_LIBS = {"telegram", "wechatpy"}
CODE_DIRS = ("bot", "handlers", "models")


def _python_files() -> list[Path]:
    return [p for d in CODE_DIRS for p in (ROOT / d).rglob("*.py")]


def _module_of(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, source: str | None = None) -> list[str]:
    """Every module ``path`` imports, anywhere in it (deferred imports in functions too,
    relative ones resolved, ``from pkg import mod`` as ``pkg.mod``, and the string given to
    ``importlib.import_module`` or ``__import__``)."""
    package = _module_of(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found: list[str] = []
    if source is None:
        source = path.read_text(encoding="utf-8")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.append(module)
            found += [f"{module}.{a.name}" for a in node.names]
        elif (
            isinstance(node, ast.Call)
            and (
                (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                or (isinstance(node.func, ast.Name) and node.func.id == "__import__")
            )
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append(node.args[0].value)
    return found


def _within(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_platform_libraries_only_in_channels() -> None:
    """``telegram`` and ``wechatpy`` (any of their modules, imported any way) only in
    bot/channels/."""
    offenders = [
        f"{path.relative_to(ROOT)}: {m}"
        for path in _python_files()
        if (ROOT / "bot" / "channels") not in path.parents
        for m in _imports(path)
        if m.split(".")[0] in PLATFORM_LIBS
    ]
    assert not offenders, offenders


def test_the_import_scanner_sees_every_way_of_importing() -> None:
    """The rule above would pass vacuously if the scanner missed a form of import."""
    sample = ROOT / "bot" / "core" / "_probe.py"
    code = (
        "import telegram.ext\n"
        "from wechatpy import parse_message\n"
        "from ..channels import telegram as tg\n"
        "def later():\n"
        "    import importlib\n"
        "    importlib.import_module('wechatpy.crypto')\n"
    )
    found = set(_imports(sample, code))
    assert {"telegram.ext", "wechatpy", "bot.channels.telegram", "wechatpy.crypto"} <= found


def test_the_core_imports_neither_handlers_nor_channels() -> None:
    """bot/core is the domain: chat flows (handlers) and platforms (bot/channels) use it, never
    the other way round; nor does it draw pictures (bot/printing, bot/reports do)."""
    offenders = [
        f"{path.relative_to(ROOT)}: {m}"
        for path in (ROOT / "bot" / "core").rglob("*.py")
        for m in _imports(path)
        if _within(m, "handlers", "bot.channels", "bot.app", "PIL", "qrcode", "matplotlib")
    ]
    assert not offenders, offenders


def test_only_the_scheduler_engine_touches_apscheduler_internals() -> None:
    """APScheduler's private API is quarantined in bot/scheduler/engine.py (pinned by
    tests/duties/test_engine_pins.py): elsewhere, no ``._jobstore_alias``, ``._jobstores``,
    ``._executors``, ``._process_jobs`` or other underscored APScheduler attribute."""
    private = re.compile(
        r"\._(?:jobstore_alias|jobstores(?:_lock)?|executors|process_jobs|start_timer|"
        r"stop_timer|eventloop|lookup_executor|do_submit_job|run_job_success|"
        r"reconstitute_job|modify|get_run_times|pass)\b"
    )
    engine = ROOT / "bot" / "scheduler" / "engine.py"
    offenders = [
        f"{path.relative_to(ROOT)}: {m.group(0)}"
        for path in _python_files()
        if path != engine
        for m in private.finditer(path.read_text(encoding="utf-8"))
    ]
    assert not offenders, offenders


def test_models_do_not_import_the_layers_above() -> None:
    offenders = []
    for path in (ROOT / "models").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                top = node.module.split(".")[0]
                if top in ("bot", "handlers"):
                    offenders.append(f"{path.relative_to(ROOT)}: {node.module}")
            elif isinstance(node, ast.Import):
                offenders += [f"{path.relative_to(ROOT)}: {a.name}" for a in node.names
                              if a.name.split(".")[0] in ("bot", "handlers")]
    assert not offenders, offenders


def test_the_root_and_the_settings_know_no_platform() -> None:
    """Adding a platform touches its adapter and the registry's table, not the composition
    root, the settings loader or the deliverer: none of them imports an adapter module."""
    channels = ROOT / "bot" / "channels"
    adapters = {
        f"bot.channels.{p.stem}" for p in channels.glob("*.py")
    } | {  # an adapter split into a package (bot/channels/wechat/)
        f"bot.channels.{p.parent.name}" for p in channels.glob("*/__init__.py")
    }
    adapters -= {"bot.channels.__init__", "bot.channels.base", "bot.channels.registry"}
    assert "bot.channels.wechat" in adapters and "bot.channels.telegram" in adapters
    offenders = [
        f"{name}: {module}"
        for name in ("bot/app.py", "bot/config.py", "bot/delivery.py", "handlers/intake.py")
        for module in _imports(ROOT / name)
        if _within(module, *adapters)
    ]
    assert not offenders, offenders


KEY_CALL = re.compile(
    r"""\b(?:t|say|tr\.t)\(\s*(?:[a-z_]+,\s*)?["']([a-z]+\.[a-z_]+)["']"""
)


def test_every_message_key_in_every_catalog() -> None:
    tr = Translator.load(ROOT / "locales")
    used: set[str] = set()
    for path in _python_files():
        used |= set(KEY_CALL.findall(path.read_text(encoding="utf-8")))
    assert len(used) > 100, "the key scanner found too few keys: is the pattern broken?"
    for lang, catalog in tr.catalogs.items():
        missing = sorted(k for k in used if k not in catalog)
        assert not missing, f"{lang} lacks {missing}"


def test_catalogs_have_the_same_keys_and_placeholders() -> None:
    tr = Translator.load(ROOT / "locales")
    zh, en = tr.catalogs["zh_CN"], tr.catalogs["en"]
    assert set(zh) == set(en)
    field = re.compile(r"\{([a-z_]+)\}")
    for key in zh:
        assert set(field.findall(zh[key])) == set(field.findall(en[key])), key


def test_dynamic_keys_exist() -> None:
    """Keys built at run time (status, category, role, invite errors) are all there."""
    from models.orders import FINAL_STATES, OPEN_STATES
    from models.people import ROLES

    tr = Translator.load(ROOT / "locales")
    keys = [f"status.{s}" for s in (*OPEN_STATES, *FINAL_STATES, "confirmed")]
    keys += [f"role.{r}" for r in ROLES] + [f"help.{r}" for r in ROLES]
    keys += [f"invite.{r}" for r in ("malformed", "forged", "expired", "used", "revoked")]
    keys += [f"category.{c}" for c in ("repair", "safety", "elderly", "dispute", "sanitation",
                                       "other")]
    for lang, catalog in tr.catalogs.items():
        assert not [k for k in keys if k not in catalog], lang


def test_handler_modules_import_one_another_without_a_cycle() -> None:
    """Handlers are registered in tables (``handlers/commands.py``, the intake) rather than
    reached back into: counting imports inside functions too, no handler module imports one
    that imports it, directly or round about."""
    modules = {
        f"handlers.{p.stem}": p for p in (ROOT / "handlers").glob("*.py") if p.stem != "__init__"
    }
    graph = {
        name: {m for m in _imports(path) if m in modules and m != name}
        for name, path in modules.items()
    }
    cycles: list[list[str]] = []

    def visit(name: str, trail: list[str]) -> None:
        for nxt in sorted(graph[name]):
            if nxt in trail:
                cycles.append([*trail[trail.index(nxt):], nxt])
            elif len(trail) < len(modules):
                visit(nxt, [*trail, nxt])

    for start in sorted(graph):
        visit(start, [start])
    assert not cycles, cycles[:5]
