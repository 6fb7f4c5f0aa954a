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


def test_platform_libraries_only_in_channels() -> None:
    offenders = []
    for path in _python_files():
        if (ROOT / "bot" / "channels") in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names
                          if n.split(".")[0] in PLATFORM_LIBS]
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


def _imports(path: Path) -> list[str]:
    """The absolute modules ``path`` imports (also inside functions)."""
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names]
    return found


def test_the_root_and_the_settings_know_no_platform() -> None:
    """Adding a platform touches its adapter and the registry's table, not the composition
    root, the settings loader or the deliverer: none of them imports an adapter module."""
    adapters = {
        f"bot.channels.{p.stem}" for p in (ROOT / "bot" / "channels").glob("*.py")
    } - {"bot.channels.__init__", "bot.channels.base", "bot.channels.registry"}
    offenders = [
        f"{name}: {module}"
        for name in ("bot/app.py", "bot/config.py", "bot/delivery.py", "handlers/router.py")
        for module in _imports(ROOT / name)
        if module in adapters
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
