"""Import a community file (YAML, or flat CSV lists) into the database.

The YAML file describes one community: its level names, order categories, the grid tree (any
depth, nested with ``children``), the buildings, the people with their roles and, optionally,
order clocks per category and level (``clocks:``, rows of ``clock_setting``). CSV files carry
flat lists of buildings (``code,grid,name,address[,latitude,longitude]``) or people
(``key,name,phone,role,grid,building,room``, one row per role) that refer to grids and buildings
already in the database. Buildings may carry coordinates and categories their Open311
``group``, ``keywords`` and ``attributes`` (what the city platform reads and fills in).

Rules the importer keeps:

* Everything is validated before the first write; a bad file raises :class:`CommunityFileError`
  naming the file, the line and the reason, and leaves the session untouched.
* Rows are matched by ``code`` (grids, buildings, categories) or ``key`` (people) and updated in
  place; re-importing the same file changes nothing.
* The file is the truth for the people it lists: their roles that the file does not mention are
  removed (the caller hands their open work over: :attr:`ImportReport.lost_roles`). People the
  file does not list are left alone (the report names them: ``gridbot person remove`` removes
  someone), and so are grids and buildings.
* An optional field (a person's ``phone`` or ``locale``, a building's ``address``, the
  community's ``timezone`` or ``levels``) that a YAML file leaves out is left as it is;
  ``phone: ""`` or ``phone: null`` clears it. In CSV an empty cell leaves the value alone.
* ``Grid.path`` (``/1/4/17/``) and ``Grid.depth`` are recomputed for every grid whose ancestry
  changed, including grids the file does not list.
* A ``clocks:`` item is matched by its (category, level) and sets the durations it names; a
  duration it leaves out is left as it is, ``null`` clears it, and a row left with no duration
  is removed. Clock rows the file does not list are left alone.

The import runs in stages, one module each: :mod:`~bot.admin.importer.reader` reads the file
into a :class:`~bot.admin.importer.plan.Plan`, :mod:`~bot.admin.importer.validator` checks it
against the database (reads only), :mod:`~bot.admin.importer.writer` applies it. The clock rows
are written through :mod:`bot.admin.clock_store`.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession

from bot.admin.importer.errors import CommunityFileError
from bot.admin.importer.plan import default_categories
from bot.admin.importer.reader import guess_format, parse_csv, parse_yaml, read_text
from bot.admin.importer.validator import check_plan
from bot.admin.importer.writer import ImportReport, write_plan

__all__ = ["CommunityFileError", "ImportReport", "default_categories", "import_community"]


async def import_community(
    session: AsyncSession, source: Path | str, *, fmt: str | None = None
) -> ImportReport:
    """Load a community file into the database, in the caller's transaction.

    ``fmt`` is ``"yaml"`` or ``"csv"`` (default: from the file suffix). Raises
    :class:`CommunityFileError` before writing anything when the file is bad.
    """
    path = Path(source)
    label = str(source)
    kind = (fmt or guess_format(path)).lower()
    if kind == "yml":
        kind = "yaml"
    try:
        if kind not in ("yaml", "csv"):
            raise CommunityFileError(f"unknown format '{fmt}' (yaml or csv)")
        text = read_text(path)
        plan = parse_yaml(text) if kind == "yaml" else parse_csv(text)
        report = ImportReport(
            source=label,
            fmt=kind,
            community=plan.community.code if plan.community else None,
            ignored=plan.ignored,
        )
        checked = await check_plan(session, plan, kind)
        await write_plan(session, checked, report)
    except CommunityFileError as exc:
        exc.file = exc.file or label
        raise
    return report
