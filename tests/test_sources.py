"""Every source format, and every kind of bad record quarantined with its reason."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from kexue.text.ingest import ingest
from kexue.text.sources import SourceSpec, read_source, Doc, Rejected

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + os.urandom(64)


def records(spec, base):
    return list(read_source(SourceSpec.model_validate(spec), Path(base)))


def docs(recs):
    return [r for r in recs if isinstance(r, Doc)]


def rejected(recs):
    return {Path(r.location.split(":")[0]).name: r.reason for r in recs if isinstance(r, Rejected)}


def test_builtin_peoples_daily_recovers_text_and_gold_tokens():
    recs = records({"source": "builtin:peoples-daily-1998", "limit": 5}, ".")
    assert len(recs) == 5
    d = recs[0]
    assert d.text == "迈向充满希望的新世纪——一九九八年新年讲话（附图片１张）"
    assert "".join(d.gold_tokens) == d.text and d.gold_tokens[:3] == ("迈向", "充满", "希望")
    assert "/" not in d.text


def test_builtin_reviews_are_labelled():
    recs = records("builtin:reviews", ".")
    labels = {r.label for r in docs(recs)}
    assert labels == {"neg", "pos"}
    assert len(recs) == 35124


def test_text_folder_thucnews_layout(tmp_path):
    (tmp_path / "体育").mkdir()
    (tmp_path / "财经").mkdir()
    (tmp_path / "体育" / "1.txt").write_text("中国队赢得了比赛。", encoding="utf-8")
    (tmp_path / "财经" / "2.txt").write_bytes("股市今天上涨。".encode("gb18030"))
    (tmp_path / "财经" / "3.txt").write_bytes(b"\xef\xbb\xbf" + "银行利率下调。".encode("utf-8"))
    (tmp_path / "top.txt").write_text("没有标签的文档", encoding="utf-8")
    got = {d.key: (d.label, d.text) for d in docs(records(str(tmp_path), "."))}
    assert got == {
        "top.txt": (None, "没有标签的文档"),
        "体育/1.txt": ("体育", "中国队赢得了比赛。"),
        "财经/2.txt": ("财经", "股市今天上涨。"),
        "财经/3.txt": ("财经", "银行利率下调。"),  # BOM stripped
    }


def test_bad_text_files_are_quarantined_with_reasons(tmp_path):
    root = tmp_path / "corpus"
    (root / "a").mkdir(parents=True)
    (root / "a" / "ok.txt").write_text("好的文本", encoding="utf-8")
    (root / "a" / "badutf8.txt").write_bytes("几乎是好的文本".encode() + b"\xff" + "后面".encode())
    (root / "a" / "nul.txt").write_bytes(b"abc\x00def")
    (root / "a" / "image.txt").write_bytes(PNG)
    (root / "a" / "empty.txt").write_bytes(b"")
    (root / "a" / "blank.txt").write_text(" \n\t  \n")
    noperm = root / "a" / "noperm.txt"
    noperm.write_text("秘密")
    noperm.chmod(0)
    (root / "a" / "loop1.txt").symlink_to(root / "a" / "loop2.txt")
    (root / "a" / "loop2.txt").symlink_to(root / "a" / "loop1.txt")
    (tmp_path / "outside.txt").write_text("外面的文件")
    (root / "a" / "escape.txt").symlink_to(tmp_path / "outside.txt")
    (root / "a" / "dirloop").symlink_to(root)
    (root / "目录 带空格").mkdir()
    (root / "目录 带空格" / "文件 名.txt").write_text("路径里有空格和中文", encoding="utf-8")
    recs = records(str(root), ".")
    bad = rejected(recs)
    assert bad["badutf8.txt"].startswith("invalid UTF-8")
    assert bad["nul.txt"] == "binary content (NUL bytes)"
    assert bad["image.txt"] == "binary file (PNG image)"
    assert bad["empty.txt"] == "empty text" and bad["blank.txt"] == "empty text"
    assert "no read permission" in bad["noperm.txt"]
    assert "symlink" in bad["loop1.txt"] and "symlink" in bad["loop2.txt"]
    assert bad["escape.txt"] == "symlink points outside the source root"
    assert bad["dirloop"] == "symlinked folder not followed"
    assert sorted(d.key for d in docs(recs)) == ["a/ok.txt", "目录 带空格/文件 名.txt"]


def test_jsonl_csv_parquet_with_configurable_columns(tmp_path):
    j = tmp_path / "d.jsonl"
    j.write_text("\n".join([
        json.dumps({"doc": "j1", "body": "第一条", "y": "A"}, ensure_ascii=False),
        '{"doc": "j2", "body": "断掉的',
        json.dumps({"doc": "j3", "other": "没有正文"}, ensure_ascii=False),
        json.dumps({"doc": "j4", "body": "第四条"}, ensure_ascii=False),
        "[1, 2]",
    ]), encoding="utf-8")
    spec = {"source": str(j), "id_column": "doc", "text_column": "body", "label_column": "y"}
    recs = records(spec, ".")
    assert [(d.key, d.text, d.label) for d in docs(recs)] == [("j1", "第一条", "A"), ("j4", "第四条", None)]
    reasons = sorted(r.reason for r in recs if isinstance(r, Rejected))
    assert reasons[0].startswith("invalid JSON") and "missing field 'body'" in reasons and "not a JSON object" in reasons

    c = tmp_path / "d.csv"
    c.write_text('id,text,label\n1,"有逗号,的文本",pos\n2,太多,字段,了\n3,,neg\n4,正常,neg\n', encoding="utf-8")
    recs = records(str(c), ".")
    assert [(d.key, d.text, d.label) for d in docs(recs)] == [("1", "有逗号,的文本", "pos"), ("4", "正常", "neg")]
    assert sorted(r.reason for r in recs if isinstance(r, Rejected)) == ["empty text", "ragged row: 4 fields, header has 3"]

    p = tmp_path / "d.parquet"
    pd.DataFrame({"id": ["p1", "p2", "p3"], "text": ["甲", None, "丙"], "label": ["x", "y", None]}).to_parquet(p)
    recs = records(str(p), ".")
    assert [(d.key, d.text, d.label) for d in docs(recs)] == [("p1", "甲", "x"), ("p3", "丙", None)]
    assert [r.reason for r in recs if isinstance(r, Rejected)] == ["field 'text' is null"]

    q = tmp_path / "notext.parquet"
    pd.DataFrame({"id": ["1"], "body": ["x"]}).to_parquet(q)
    (rec,) = records(str(q), ".")
    assert isinstance(rec, Rejected) and "no column 'text'" in rec.reason

    broken = tmp_path / "broken.parquet"
    broken.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
    (rec,) = records(str(broken), ".")
    assert isinstance(rec, Rejected) and rec.reason.startswith("unreadable Parquet")


def test_ingest_report_adds_up_dedups_and_reports_label_conflicts(tmp_path):
    j = tmp_path / "r.jsonl"
    rows = [("a", "同一句话", "pos"), ("b", "同一句话", "neg"), ("c", "同一句话", "pos"), ("d", "别的话", "pos"), ("e", "", "pos")]
    j.write_text("\n".join(json.dumps({"id": i, "text": t, "label": l}, ensure_ascii=False) for i, t, l in rows) + "\n{bad\n", encoding="utf-8")
    res = ingest({"sources": [str(j), {"source": "builtin:reviews", "limit": 50}]}, tmp_path, tmp_path / "out")
    r = res.report
    assert r["read"] == r["kept"] + r["duplicates"] + r["quarantined"]
    assert r["per_source"]["r.jsonl"] == {"read": 6, "kept": 2, "duplicates": 2, "quarantined": 2}
    assert r["label_conflicts"] >= 1
    conflicts = pd.read_parquet(res.conflicts)
    row = conflicts[conflicts["doc_id"] == "r.jsonl/a"].iloc[0]
    assert list(row["labels"]) == ["neg", "pos"] and row["kept_label"] == "pos"
    q = pd.read_parquet(res.quarantine)
    assert len(q) == r["quarantined"] and set(q.columns) == {"source", "location", "reason"}
    kept = pd.concat(pd.read_parquet(p.path) for p in res.partitions)
    assert len(kept) == r["kept"] and kept["hash"].is_unique


def test_adding_one_document_changes_one_partition(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(300):
        (folder / f"{i:04d}.txt").write_text(f"第{i}篇文档的内容，" * 20, encoding="utf-8")
    params = {"sources": [str(folder)], "partition_bytes": 20_000}
    before = {p.sha256 for p in ingest(params, tmp_path, tmp_path / "o1").partitions}
    (folder / "0150b.txt").write_text("新加入的一篇文档。" * 30, encoding="utf-8")
    after = {p.sha256 for p in ingest(params, tmp_path, tmp_path / "o2").partitions}
    assert len(before) >= 8
    assert len(after - before) in (1, 2)  # the partition it landed in (split in two if it ends one)
    assert len(before - after) == 1
