from __future__ import annotations

import pytest

from harness.core.mapping import PathSyntaxError, parse_path

PAYLOAD = {"data": {"amount": 42, "id": None, "items": [{"sku": "A1"}, {"sku": "B2"}], "grid": [[1, 2], [3, 4]]}}


@pytest.mark.parametrize(
    ("path", "found", "value"),
    [
        ("data.amount", True, 42),
        ("data.id", True, None),
        ("data.items[1].sku", True, "B2"),
        ("data.items", True, [{"sku": "A1"}, {"sku": "B2"}]),
        ("data.grid[1][0]", True, 3),
        ("data.items[2].sku", False, None),
        ("data.amount.value", False, None),
        ("data.items.sku", False, None),
        ("data[0]", False, None),
        ("nothing", False, None),
    ],
)
def test_extract(path: str, found: bool, value) -> None:
    assert parse_path(path).extract(PAYLOAD) == (found, value)


def test_keys_may_hold_spaces_and_dashes() -> None:
    assert parse_path("order info.payer-email").extract({"order info": {"payer-email": "a@b"}}) == (True, "a@b")


@pytest.mark.parametrize("path", ["", "  ", ".a", "a.", "a..b", "a[-1]", "a[b]", "a[1", "a]1["])
def test_bad_paths(path: str) -> None:
    with pytest.raises(PathSyntaxError):
        parse_path(path)
