"""The generic table adapter (`table:DIR`): layout, round trip, training, and its error messages."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from limaml.adapters.registry import ACCEPTED_FORMS, load_dataset
from limaml.adapters.synthetic import SyntheticConfig, generate_synthetic
from limaml.adapters.tabular import TableFormatError, load_table, write_table
from limaml.artifacts import load_artifact
from limaml.cli import main
from limaml.data import InteractionLog

T0 = 1_714_564_800_000  # 2024-05-01T12:00:00Z


def write(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text)
    return path


@pytest.fixture
def table(tmp_path: Path) -> Path:
    """A hand-written CSV table: unsorted events with a tie, context, partial member/item rows."""
    directory = tmp_path / "shop"
    write(directory, "interactions.csv",
          "member_id,item_id,label,ts,slot,price\n"
          f"alice,book,1,{T0 + 2000},0.5,12.5\n"
          f"bob,pen,0,{T0},1,1\n"
          f"carol,book,0,{T0 + 1000},0,12.5\n"  # tie with the next line: file order is kept
          f"alice,lamp,1,{T0 + 1000},0.25,30\n")
    write(directory, "members.csv",
          "member_id,country,tier\n"
          "dave,fr,gold\n"  # no events: still a member, with a profile
          "alice,de,\n"  # empty value: unknown
          "bob,fr,silver\n")  # carol has no row: unknown features
    write(directory, "items.csv",
          "item_id,weight,new\n"
          "pen,0.1,1\n"
          "book,0.5,0\n")  # lamp has no row: zero features
    return directory


def tokens(log: InteractionLog, which: str) -> list[str | None]:
    vocabulary = log.members if which == "member" else log.items
    return [vocabulary.token(index) for index in getattr(log, which)]


def test_csv_table_is_read_as_written(table: Path) -> None:
    log = load_table(table)
    assert log.name == "shop"
    assert tokens(log, "member") == ["bob", "carol", "alice", "alice"]
    assert tokens(log, "item") == ["pen", "book", "lamp", "book"]
    assert log.ts.tolist() == [T0, T0 + 1000, T0 + 1000, T0 + 2000]
    assert log.label.tolist() == [0.0, 0.0, 1.0, 1.0] and log.label.dtype == np.float32
    assert log.context_names == ("slot", "price")
    assert log.context.tolist() == [[1, 1], [0, 12.5], [0.25, 30], [0.5, 12.5]]
    # listed ids first, in file order, then the others by first appearance in time order
    assert log.members.tokens == ("dave", "alice", "bob", "carol")
    assert log.items.tokens == ("pen", "book", "lamp")
    assert log.member_feature_vocabs["country"].tokens == ("de", "fr")
    assert log.member_feature_vocabs["tier"].tokens == ("gold", "silver")
    profile = {member: {name: log.member_feature_vocabs[name].token(int(codes[log.members.index(member)]))
                        for name, codes in log.member_features.items()}
               for member in log.members.tokens}
    assert profile == {"dave": {"country": "fr", "tier": "gold"}, "alice": {"country": "de", "tier": None},
                       "bob": {"country": "fr", "tier": "silver"}, "carol": {"country": None, "tier": None}}
    assert log.member_features["country"][0] == 0  # the OOV member row
    assert log.item_feature_names == ("weight", "new")
    assert log.item_features.dtype == np.float32
    assert np.array_equal(log.item_features, np.array([[0, 0], [0.1, 1], [0.5, 0], [0, 0]], np.float32))


def test_optional_tables_can_be_left_out(tmp_path: Path) -> None:
    write(tmp_path, "interactions.csv", f"member_id,item_id,label,ts\nu1,7,1,{T0}\nu2,8,0,{T0 - 5}\n")
    log = load_table(tmp_path)
    assert log.member_features == {} and log.member_feature_vocabs == {}
    assert log.member_feature_matrix().shape == (3, 0)  # the model reads a learned constant input
    assert log.item_features.shape == (3, 0) and log.context.shape == (2, 0)
    assert log.members.tokens == ("u2", "u1") and log.items.tokens == ("8", "7")


def test_iso_timestamps_in_utc(tmp_path: Path) -> None:
    write(tmp_path, "interactions.csv",
          "member_id,item_id,label,ts\n"
          "a,x,1,2024-05-01T14:00:00.250+02:00\n"
          "a,y,0,2024-05-01T12:00:00Z\n"
          "b,x,0,2024-05-01 11:59:59\n")  # no offset: UTC
    log = load_table(tmp_path)
    assert log.ts.tolist() == [T0 - 1000, T0, T0 + 250]
    assert tokens(log, "item") == ["x", "y", "x"]


def test_excel_style_csv_with_byte_order_mark_and_crlf(tmp_path: Path) -> None:
    (tmp_path / "interactions.csv").write_bytes(
        b"\xef\xbb\xbfmember_id,item_id,label,ts\r\n007,x,1,2024-05-01T12:00:00Z\r\n")
    log = load_table(tmp_path)
    assert log.members.tokens == ("007",) and log.ts.tolist() == [T0]  # ids stay text: no "7"


def test_parquet_table_with_typed_columns(tmp_path: Path) -> None:
    pd.DataFrame({
        "member_id": [10, 20, 10],  # integer ids are read as their decimal text
        "item_id": ["x", "y", "y"],
        "label": [True, False, True],
        "ts": pd.to_datetime([T0 + 5, T0, T0 + 9], unit="ms", utc=True),
        "device": pd.array([1, 0, 1], dtype="int8"),
    }).to_parquet(tmp_path / "interactions.parquet")
    pd.DataFrame({"member_id": [20, 10], "age": pd.array([34, None], dtype="Int64")}).to_parquet(
        tmp_path / "members.parquet")
    pd.DataFrame({"item_id": ["x", "y"], "score": [0.5, 2.0]}).to_parquet(tmp_path / "items.parquet")
    log = load_table(tmp_path)
    assert tokens(log, "member") == ["20", "10", "10"] and log.ts.tolist() == [T0, T0 + 5, T0 + 9]
    assert log.label.tolist() == [0.0, 1.0, 1.0] and log.context.tolist() == [[0], [1], [1]]
    assert log.member_feature_vocabs["age"].tokens == ("34",)
    assert log.member_features["age"].tolist() == [0, 1, 0]  # OOV row, member 20, member 10 (null)
    assert log.item_features[:, 0].tolist() == [0.0, 0.5, 2.0]


@pytest.mark.parametrize("file_format", ["csv", "parquet"])
def test_synthetic_log_round_trips(tmp_path: Path, file_format: str) -> None:
    original = generate_synthetic(SyntheticConfig(n_members=40, n_items=25, seed=2)).log
    directory = write_table(original, tmp_path / "synthetic", file_format)  # type: ignore[arg-type]
    assert sorted(path.name for path in directory.iterdir()) == [
        f"{name}.{file_format}" for name in ("interactions", "items", "members")]
    log = load_table(directory)
    for name in ("member", "item", "label", "ts", "context", "item_features"):
        actual, expected = getattr(log, name), getattr(original, name)
        assert actual.dtype == expected.dtype and np.array_equal(actual, expected), name
    assert log.members == original.members and log.items == original.items
    assert log.context_names == original.context_names
    assert log.item_feature_names == original.item_feature_names
    assert log.member_feature_vocabs == original.member_feature_vocabs
    assert set(log.member_features) == set(original.member_features)
    for name, codes in original.member_features.items():
        assert np.array_equal(log.member_features[name], codes), name


def test_load_dataset_spec(table: Path) -> None:
    assert load_dataset(f"table:{table}").n_events == 4
    assert any(form.startswith("'table:") for form in ACCEPTED_FORMS)
    with pytest.raises(ValueError, match="needs a directory"):
        load_dataset("table:")
    with pytest.raises(ValueError, match="does not exist"):
        load_dataset(f"table:{table / 'nowhere'}")


@pytest.mark.parametrize("members", [True, False])
def test_train_command_on_a_table(tmp_path: Path, capsys: pytest.CaptureFixture, members: bool) -> None:
    original = generate_synthetic(SyntheticConfig(n_members=60, n_items=30, seed=1)).log
    directory = write_table(original, tmp_path / "table", "parquet")
    if not members:  # no member features: the meta block reads its constant input
        (directory / "members.parquet").unlink()
    artifacts = tmp_path / "artifacts"
    assert main(["train", "--dataset", f"table:{directory}", "--epochs", "1",
                 "--artifacts-dir", str(artifacts), "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    artifact = load_artifact(artifacts)
    assert summary["version"] == artifact.version
    assert artifact.schema.items == original.items
    assert artifact.schema.context_names == ("slot",)
    assert artifact.model.config.member_field_cardinalities == ((6, 6, 6) if members else ())
    assert artifact.training["dataset"] == f"table:{directory}"


def test_train_command_reports_a_bad_table(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write(tmp_path, "interactions.csv", f"member_id,item_id,label,ts\nu1,7,3,{T0}\n")
    assert main(["train", "--dataset", f"table:{tmp_path}", "--artifacts-dir", str(tmp_path / "a")]) == 2
    assert "label other than 0 or 1" in caplog.text


HEADER = "member_id,item_id,label,ts"
GOOD_ROW = f"m1,i1,1,{T0}"
BAD_CSV_CASES = {
    # name: (interactions text, other files, message pattern)
    "missing column": ("member_id,item_id,ts\nm1,i1,5\n", {},
                       r"interactions\.csv: missing column\(s\) 'label' \(found 'member_id', 'item_id', 'ts'\)"),
    "label not 0/1": (f"{HEADER}\n{GOOD_ROW}\nm2,i1,2,{T0}\n", {},
                      r"interactions\.csv: column 'label': label other than 0 or 1 in 1 row\(s\), "
                      r"e\.g\. line 3: member_id='m2'.*label='2'.*write 1 for a positive"),
    "label text": (f"{HEADER}\nm1,i1,yes,{T0}\n", {},
                   r"column 'label': not a number in 1 row\(s\), e\.g\. line 2: .*write 0 or 1"),
    "empty label": (f"{HEADER}\nm1,i1,,{T0}\n", {}, r"column 'label': missing value .* line 2"),
    "context text": (f"{HEADER},device\n{GOOD_ROW},1\n{GOOD_ROW},phone\n", {},
                     r"interactions\.csv: column 'device': not a number in 1 row\(s\), e\.g\. line 3: "
                     r".*device='phone'.*context columns must be numeric"),
    "context NaN": (f"{HEADER},slot\n{GOOD_ROW},nan\n", {},
                    r"column 'slot': not a finite number \(NaN or infinity\) .* line 2"),
    "context empty": (f"{HEADER},slot\n{GOOD_ROW},0.5\n{GOOD_ROW},\n", {},
                      r"column 'slot': missing value \(empty or NaN\) in 1 row\(s\), e\.g\. line 3"),
    "context infinite": (f"{HEADER},slot\n{GOOD_ROW},inf\n", {}, r"column 'slot': not a finite number"),
    "empty member id": (f"{HEADER}\n,i1,1,{T0}\n", {}, r"column 'member_id': missing or empty id .* line 2"),
    "bad timestamp": (f"{HEADER}\nm1,i1,1,yesterday\n", {},
                      r"column 'ts': neither epoch milliseconds nor an ISO-8601 time .* line 2.*2024-05-01T12"),
    "seconds": (f"{HEADER}\nm1,i1,1,{T0 // 1000}\n", {},
                r"column 'ts': time outside 1990\.\.2100 .* look like epoch seconds: multiply by 1000"),
    "fractional ms": (f"{HEADER}\nm1,i1,1,{T0}.5\n", {}, r"column 'ts': fractional epoch milliseconds"),
    "empty file": ("", {}, r"interactions\.csv is empty: write a header line"),
    "header only": (f"{HEADER}\n", {}, r"interactions\.csv has no rows"),
    "duplicate member": (f"{HEADER}\n{GOOD_ROW}\n", {"members.csv": "member_id,tier\nm1,gold\nm2,\nm1,silver\n"},
                         r"members\.csv: column 'member_id': duplicate id .* line 4: member_id='m1', "
                         r"tier='silver'; keep one row per id"),
    "duplicate item": (f"{HEADER}\n{GOOD_ROW}\n", {"items.csv": "item_id,w\ni1,1\ni1,2\n"},
                       r"items\.csv: column 'item_id': duplicate id .* line 3"),
    "item feature text": (f"{HEADER}\n{GOOD_ROW}\n", {"items.csv": "item_id,colour\ni1,red\n"},
                          r"items\.csv: column 'colour': not a number .* line 2.*item feature columns must "
                          r"be numeric"),
    "item feature empty": (f"{HEADER}\n{GOOD_ROW}\n", {"items.csv": "item_id,w\ni1,\n"},
                           r"items\.csv: column 'w': missing value"),
    "members without id": (f"{HEADER}\n{GOOD_ROW}\n", {"members.csv": "user,tier\nm1,gold\n"},
                           r"members\.csv: missing column\(s\) 'member_id'"),
    "empty members": (f"{HEADER}\n{GOOD_ROW}\n", {"members.csv": ""},
                      r"members\.csv is empty: .*delete the file if it is optional"),
    "both formats": (f"{HEADER}\n{GOOD_ROW}\n", {"interactions.parquet": "not parquet"},
                     r"has both interactions\.csv and interactions\.parquet: keep one"),
}


@pytest.mark.parametrize("case", list(BAD_CSV_CASES))
def test_bad_csv_input_is_named(tmp_path: Path, case: str) -> None:
    interactions, others, pattern = BAD_CSV_CASES[case]
    write(tmp_path, "interactions.csv", interactions)
    for name, text in others.items():
        write(tmp_path, name, text)
    with pytest.raises(TableFormatError, match=pattern) as caught:
        load_table(tmp_path)
    assert str(tmp_path) in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_missing_interactions_table(tmp_path: Path) -> None:
    write(tmp_path, "members.csv", "member_id\nm1\n")
    with pytest.raises(TableFormatError, match=re.escape(f"{tmp_path / 'interactions'}.csv (or .parquet) "
                                                         "is missing: it is required, with the columns "
                                                         "member_id, item_id, label, ts")):
        load_table(tmp_path)


@pytest.mark.parametrize("column, values, pattern", [
    ("label", [1.0, float("nan")], r"interactions\.parquet: column 'label': missing value .* row 2"),
    ("ts", [T0, None], r"column 'ts': missing timestamp .* row 2"),
    ("item_id", [1.5, 2.5], r"column 'item_id': ids of type Float64 .* row 1: member_id='a', item_id=1\.5, label=1, .* "
                "write ids as strings or integers"),
    ("item_id", ["a", None], r"column 'item_id': missing or empty id .* row 2"),
    ("slot", ["top", "bottom"], r"column 'slot': not a number in 2 row\(s\), e\.g\. row 1"),
])
def test_bad_parquet_input_is_named(tmp_path: Path, column: str, values: list, pattern: str) -> None:
    frame = pd.DataFrame({"member_id": ["a", "b"], "item_id": ["x", "y"], "label": [1, 0], "ts": [T0, T0]})
    frame[column] = values
    frame.to_parquet(tmp_path / "interactions.parquet")
    with pytest.raises(TableFormatError, match=pattern):
        load_table(tmp_path)


def test_unreadable_parquet(tmp_path: Path) -> None:
    write(tmp_path, "interactions.parquet", "this is not parquet")
    with pytest.raises(TableFormatError, match=r"interactions\.parquet cannot be read as parquet"):
        load_table(tmp_path)


def test_rows_missing_from_members_and_items_are_logged(table: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="limaml.adapters.tabular"):
        load_table(table)
    assert "1 members of the interactions have no row in members (features: unknown)" in caplog.text
    assert "1 items of the interactions have no row in items (features: zeros)" in caplog.text
