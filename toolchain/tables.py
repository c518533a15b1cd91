"""`edgelm boards` and `edgelm ports` on a terminal: compact by default (they fit 80 columns),
every column with ``--wide``. What one copies from them, a board's name and a port's path or
``--port`` spec, is never cut: those columns do not wrap and are as wide as their longest value,
and the table is printed wider than the terminal rather than cut one (the terminal wraps it)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.markup import escape
from rich.padding import Padding
from rich.segment import Segments
from rich.table import Table


def _shown(value: Any) -> str:
    """A profile's or a port's text as it is shown: never a terminal control sequence."""
    from toolchain.cli import printable

    return printable(str(value))


def _clean(value: Any) -> str:
    """``_shown``, never read as markup."""
    return escape(_shown(value))


def _size(n: float) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:g} {unit}"
    return f"{n:g} B"


def _print(console: Console, table: Table, whole: Sequence[int], *, wide: bool = False) -> None:
    """Print ``table`` with no value cut: the columns ``whole`` (indices) do not wrap and are as wide as
    their longest value, the others wrap between words, never narrower than their longest word. The
    table is printed wider than the console when that needs it (the terminal wraps its lines); with
    ``wide``, as wide as it takes for no cell to wrap."""
    most, least = [], []
    for index, column in enumerate(table.columns):
        values = [str(column.header), *(_plain(cell) for cell in column.cells)]
        longest = max(cell_len(v) for v in values)
        most.append(longest)
        if index in whole or wide:
            column.no_wrap = True
            least.append(longest)
        else:
            least.append(max(cell_len(w) for v in values for w in v.split() or [""]))
        column.overflow = "fold"
    widths = _fit(most, least, console.width - _overhead(table))
    for column, width in zip(table.columns, widths, strict=True):
        column.width = width
    need = sum(widths) + _overhead(table)
    if need <= console.width:
        console.print(table)
        return
    # wider than the console (print's own width is at most the console's): rendered at that width
    lines = console.render_lines(table, console.options.update_width(need), pad=False, new_lines=True)
    console.print(Segments([segment for line in lines for segment in line]), crop=False, soft_wrap=True)


def _fits(console: Console, table: Table, whole: Sequence[int]) -> bool:
    """Whether ``table`` fits the console with its columns ``whole`` uncut and the others no narrower
    than 20 columns (a description one word to a line is no table)."""
    room = console.width - _overhead(table)
    least = []
    for index, column in enumerate(table.columns):
        values = [str(column.header), *(_plain(cell) for cell in column.cells)]
        least.append(max(cell_len(v) for v in values) if index in whole else
                     min(max(cell_len(v) for v in values), 20))
    return sum(least) <= room


def _fit(most: list[int], least: list[int], room: int) -> list[int]:
    """Column widths within ``room``: each starts at ``most`` and the widest is narrowed, one column
    at a time, never below its ``least`` (the sum may then exceed ``room``)."""
    widths = list(most)
    while sum(widths) > room:
        narrower = [i for i, w in enumerate(widths) if w > least[i]]
        if not narrower:
            break
        widths[max(narrower, key=lambda i: widths[i])] -= 1
    return widths


def _overhead(table: Table) -> int:
    """The table's width besides its columns' text: borders, separators and padding."""
    n = len(table.columns)
    _, right, _, left = table.padding
    pads = n * (left + right) - (0 if table.pad_edge else left + right)
    return pads + (2 if table.box and table.show_edge else 0) + (n - 1 if table.box else 0)


def _plain(cell: Any) -> str:
    from rich.text import Text

    return Text.from_markup(cell).plain if isinstance(cell, str) else str(cell)


def _table(*headers: str, wide: bool) -> Table:
    if wide:
        return Table(*headers, box=box.SQUARE, header_style="bold")
    return Table(*headers, box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, header_style="bold")


def boards(console: Console, items: Sequence[dict[str, Any]], *, wide: bool) -> None:
    """``items``: the boards as `edgelm boards --json` gives them."""
    rows = []
    for b in items:
        npu = f"{b['npu']} @ {b['npu_clock_mhz']} MHz" if b["npu"] else "-"
        if b["memory"]:
            regions = [r for r in b["memory"] if r["name"] in ("SRAM", "FLASH", "DDR")]
            memory = (", ".join(f"{r['name']} {_size(r['bytes'])}" for r in regions)
                      + f"; program in {b['program_memory']}") if wide else \
                ", ".join(f"{_size(r['bytes'])} {r['name']}" for r in regions if r["name"] == "SRAM") or "-"
        else:
            memory = f"{b['ram_mb']} MB" if wide else _size(b["ram_mb"] << 20)
        cpu = " ".join(f for f in b["cpu_flags"] if f.startswith(("-mcpu", "-march")))
        target = b["default_target"] or ("- (edgelm build)" if wide else "build")
        serial = f"{b['serial_device']} @ {b['baud']}" if wide else b["serial_device"]
        if wide:
            rows.append((b["name"], cpu, b["cores"], memory, npu, b["glibc"] or "-", serial, target, b["description"]))
        else:
            rows.append((b["name"], memory, serial, target, b["description"]))
    headers = (("board", "cpu", "cores", "memory", "NPU", "glibc", "serial", "target", "description") if wide else
               ("board", "memory", "serial", "target", "description"))
    table = _table(*headers, wide=wide)
    for row in rows:
        table.add_row(*(_clean(x) for x in row))
    _print(console, table, [0, headers.index("serial")], wide=wide)
    if not wide:
        console.print("[dim]target `build`: a bare-metal board, its firmware comes from `edgelm build`. "
                      "Every column: edgelm boards --wide[/]", soft_wrap=False)


def ports(console: Console, items: Sequence[dict[str, Any]], *, wide: bool) -> None:
    """``items``: the ports as `edgelm ports --json` gives them. Compact: what to pass as --port, and
    what the port is; --wide: device, ids, serial number, description and the spec in columns."""
    if wide:
        table = _table("device", "vid:pid", "serial", "description", "--port that follows it across a reset",
                       wide=True)
        rows = [(p["device"], p["usb_id"] or p["kind"], p["serial_number"] or "-", p["description"] or "-",
                 p["spec"] if p["kind"] == "usb" else "") for p in items]
        for row in rows:
            table.add_row(*(_clean(x) for x in row))
        _print(console, table, [0, 4], wide=True)
        return
    rows = []
    for p in items:
        what = [p["usb_id"] or p["kind"]]
        if p["serial_number"]:
            what.append(f"serial {p['serial_number']}")
        if p["description"]:
            what.append(p["description"])
        if p["spec"] != p["device"]:
            what.append(f"now {p['device']}")
        rows.append((p["spec"], " · ".join(what)))
    table = _table("--port", "what it is", wide=False)
    for row in rows:
        table.add_row(*(_clean(x) for x in row))
    if _fits(console, table, [0]):
        _print(console, table, [0])
        return
    # a path too long for a row beside its description: each port on its own line, whole
    console.print("[bold]--port[/] [dim](then what it is)[/]")
    for spec, what in rows:
        console.print(_clean(spec), soft_wrap=True)
        console.print(Padding(_clean(what), (0, 0, 0, 4)))
