"""The input walk of bulk jobs (pacscore.jobs.walk): order, sizes, relative paths, and
which links are followed."""

from __future__ import annotations

import os
from pathlib import Path

from pacscore.jobs.walk import count_files, walk_files


def tree(tmp_path: Path) -> tuple[Path, Path]:
    root, outside = tmp_path / "in", tmp_path / "out"
    (root / "b" / "deep").mkdir(parents=True)
    (root / "a").mkdir()
    outside.mkdir()
    (root / "z.dcm").write_bytes(b"z" * 3)
    (root / "c.dcm").write_bytes(b"c" * 5)
    (root / "a" / "2.dcm").write_bytes(b"2" * 7)
    (root / "a" / "1.dcm").write_bytes(b"1" * 11)
    (root / "b" / "deep" / "x.dcm").write_bytes(b"x" * 13)
    (outside / "secret.dcm").write_bytes(b"s" * 17)
    (outside / "dir").mkdir()
    (outside / "dir" / "f.dcm").write_bytes(b"f")
    os.symlink(root / "c.dcm", root / "b" / "link-inside.dcm")
    os.symlink(outside / "secret.dcm", root / "link-outside.dcm")
    os.symlink(outside / "dir", root / "linked-dir")
    os.symlink(root / "a", root / "b" / "linked-dir-inside")
    os.symlink(root / "gone", root / "dangling.dcm")
    os.mkfifo(root / "fifo")
    return root, outside


def test_files_sorted_per_folder_files_first_with_sizes(tmp_path: Path) -> None:
    root, _ = tree(tmp_path)
    got = list(walk_files([str(root)]))
    assert [(rel, size) for _, rel, size in got] == [
        ("c.dcm", 5), ("z.dcm", 3),
        ("a/1.dcm", 11), ("a/2.dcm", 7),
        ("b/link-inside.dcm", 5),  # a link to a file inside the root: followed
        ("b/deep/x.dcm", 13)]
    assert [p for p, _, _ in got] == [str(root / rel) for _, rel, _ in got]


def test_links_out_of_the_root_and_linked_folders_are_not_followed(tmp_path: Path) -> None:
    root, outside = tree(tmp_path)
    paths = {p for p, _, _ in walk_files([str(root)])}
    assert not any("outside" in p or "linked-dir" in p or "dangling" in p or "fifo" in p
                   for p in paths)
    assert str(outside / "secret.dcm") not in paths


def test_a_file_root_and_several_roots(tmp_path: Path) -> None:
    root, outside = tree(tmp_path)
    got = list(walk_files([str(outside / "secret.dcm"), str(root / "a")]))
    assert [(rel, size) for _, rel, size in got] == [("secret.dcm", 17), ("1.dcm", 11),
                                                     ("2.dcm", 7)]
    assert count_files([str(root), str(root / "a")]) == (8, 5 + 3 + 11 + 7 + 5 + 13 + 18)


def test_a_missing_root_is_an_error(tmp_path: Path) -> None:
    try:
        list(walk_files([str(tmp_path / "nope")]))
    except FileNotFoundError as exc:
        assert "nope" in str(exc)
    else:
        raise AssertionError("a missing root must raise")
