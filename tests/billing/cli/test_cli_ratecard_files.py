"""Rate card files: not UTF-8 is one line and exit 2; a UTF-8 byte order mark is accepted."""

from __future__ import annotations

from pathlib import Path

from billing.cli import main as billing_main
from tests.support.billing_fixtures import SIMPLE_CARD
from tests.support.hostile_support import counts, refused


def test_a_rate_card_that_is_not_utf8_is_one_line(tmp_path: Path, capsys):
    db = f"sqlite:///{tmp_path}/b.db"
    card = tmp_path / "latin1.toml"
    card.write_bytes(SIMPLE_CARD.replace('name = "simple"', 'name = "café"').encode("latin-1"))
    before = counts(db)
    refused(capsys, ["ratecards", "load", str(card), "--db", db], f"rate card {card} is not UTF-8")
    assert counts(db) == before


def test_a_rate_card_with_a_utf8_bom_loads(tmp_path: Path, capsys):
    db = f"sqlite:///{tmp_path}/b.db"
    card = tmp_path / "bom.toml"
    card.write_bytes(b"\xef\xbb\xbf" + SIMPLE_CARD.encode())
    assert billing_main(["ratecards", "load", str(card), "--db", db]) == 0
    assert capsys.readouterr().out == "rate card simple version 1 stored\n"
    assert counts(db)["RateCard"] == 1
