"""moec never destroys or writes through a path it did not create (docs/output-safety.md), seen through the CLI.

Each output kind a user may point ``-o`` at is tried with and without ``--force``: a folder of the user's
files, the working directory, a symbolic link (to a file and to a folder), a FIFO, a device node (a private
one made with mknod in the test's own folder), a read-only folder, and a moec folder whose files changed.
Each is refused with a line naming what it is, and afterwards it is exactly as it was.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from moec.cli import cli
from tests.tiny_specs import TINY_MOE

CONFIG = {
    "model_type": "mixtral",
    "vocab_size": 64,
    "hidden_size": 32,
    "intermediate_size": 16,
    "num_hidden_layers": 1,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_local_experts": 4,
    "num_experts_per_tok": 2,
}


def moec(*args: object, **kwargs):
    return CliRunner().invoke(cli, [str(a) for a in args], **kwargs)


def snapshot(path: Path) -> object:
    """Everything a user could notice about ``path``: its kind, mode, link target, and the content below it."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        return ("link", os.readlink(path))
    if stat.S_ISDIR(st.st_mode):
        return ("dir", stat.S_IMODE(st.st_mode), {p.name: snapshot(p) for p in path.iterdir()})
    if stat.S_ISREG(st.st_mode):
        return ("file", stat.S_IMODE(st.st_mode), path.read_bytes())
    return ("special", st.st_mode, st.st_rdev)


@pytest.fixture
def spec(tmp_path) -> Path:
    p = tmp_path / "tiny.yaml"
    p.write_text(TINY_MOE)
    return p


@pytest.fixture
def config(tmp_path) -> Path:
    p = tmp_path / "config.json"
    p.write_text(json.dumps(CONFIG))
    return p


def refused(result, *words: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    for w in words:
        assert w in errors[0], result.output


def outputs_of(spec: Path, config: Path) -> dict[str, list]:
    """The three writing commands, each with its source; the output path is appended by the test."""
    return {
        "build": ["build", spec, "-o"],
        "import-hf": ["import-hf", config, "-o"],
        "export-hf": ["export-hf", spec, "-o"],
    }


def special_targets(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Paths that are not regular files or folders, each with the words a refusal must use."""
    victim = tmp_path / "victim.txt"
    victim.write_text("a user's file")
    victim_dir = tmp_path / "victim_dir"
    victim_dir.mkdir()
    (victim_dir / "notes.md").write_text("mine")
    made = {
        "link-to-file": (tmp_path / "link-file", "symbolic link"),
        "link-to-folder": (tmp_path / "link-dir", "symbolic link"),
        "dangling-link": (tmp_path / "link-none", "symbolic link"),
        "fifo": (tmp_path / "pipe", "FIFO"),
        "device": (tmp_path / "null-like", "character device"),
    }
    os.symlink(victim, made["link-to-file"][0])
    os.symlink(victim_dir, made["link-to-folder"][0])
    os.symlink(tmp_path / "nowhere", made["dangling-link"][0])
    os.mkfifo(made["fifo"][0])
    try:
        os.mknod(made["device"][0], stat.S_IFCHR | 0o600, os.makedev(1, 3))  # /dev/null's numbers, private copy
    except PermissionError:
        del made["device"]  # not root: no device node can be made, and none can be replaced either
    return made


@pytest.mark.parametrize("command", ["build", "import-hf", "export-hf"])
@pytest.mark.parametrize("force", [False, True])
def test_links_devices_and_fifos_are_refused_and_left_as_they_were(tmp_path, spec, config, command, force):
    targets = special_targets(tmp_path)
    for kind, (path, words) in targets.items():
        before = snapshot(tmp_path)
        args = [*outputs_of(spec, config)[command], path, *(["--force"] if force else [])]
        refused(moec(*args), str(path), words)
        assert snapshot(tmp_path) == before, kind


@pytest.mark.parametrize("force", [False, True])
def test_build_never_replaces_a_folder_of_user_files(tmp_path, spec, force):
    out = tmp_path / "project"
    out.mkdir()
    for name in ("train.py", "data.csv", "README.md", "a.txt", "b.txt", "c.txt"):
        (out / name).write_text(name)
    (out / "src").mkdir()
    before = snapshot(out)
    result = moec("build", spec, "-o", out, *(["--force"] if force else []))
    refused(result, str(out), "did not write", "README.md", "and 2 more")
    assert snapshot(out) == before


def test_build_into_the_working_directory_with_force_is_refused(tmp_path, spec, monkeypatch):
    project = tmp_path / "project"
    project.mkdir()
    (project / "main.py").write_text("print('my work')")
    monkeypatch.chdir(project)
    before = snapshot(project)
    refused(moec("build", spec, "-o", os.getcwd(), "--force"), "main.py")
    refused(moec("build", spec, "-o", ".", "--force"), "main.py")
    assert snapshot(project) == before


def test_a_build_folder_changed_by_its_user_is_not_replaced(tmp_path, spec):
    out = tmp_path / "out"
    assert moec("build", spec, "-o", out).exit_code == 0
    (out / "model.py").write_text((out / "model.py").read_text() + "\n# my edit\n")
    (out / "notes.txt").write_text("my notes")
    before = snapshot(out)
    refused(moec("build", spec, "-o", out, "--force"), "model.py", "notes.txt")
    assert snapshot(out) == before


def test_a_forged_manifest_does_not_vouch_for_other_files(tmp_path, spec):
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    (out / "moec-manifest.json").write_text(json.dumps({"files": {"thesis.tex": {"bytes": 1, "sha256": "0" * 64}}}))
    before = snapshot(out)
    refused(moec("build", spec, "-o", out, "--force"), "thesis.tex")
    assert snapshot(out) == before


def test_an_empty_folder_is_filled_without_force(tmp_path, spec):
    out = tmp_path / "out"
    out.mkdir()
    assert moec("build", spec, "-o", out).exit_code == 0
    assert (out / "model.py").is_file() and (out / "moec-manifest.json").is_file()


@pytest.mark.parametrize("command", ["build", "import-hf", "export-hf"])
def test_a_read_only_folder_is_refused_and_left_untouched(tmp_path, spec, config, command):
    folder = tmp_path / "readonly"
    folder.mkdir()
    (folder / "kept.txt").write_text("kept")
    folder.chmod(0o555)
    try:
        before = snapshot(folder)
        refused(moec(*outputs_of(spec, config)[command], folder / "out", "--force"), "read-only")
        assert snapshot(folder) == before
    finally:
        folder.chmod(0o755)


def test_a_read_only_build_folder_is_not_replaced(tmp_path, spec):
    out = tmp_path / "out"
    assert moec("build", spec, "-o", out).exit_code == 0
    out.chmod(0o555)
    try:
        before = snapshot(out)
        refused(moec("build", spec, "-o", out, "--force"), "read-only")
        assert snapshot(out) == before
    finally:
        out.chmod(0o755)


@pytest.mark.parametrize("command", ["import-hf", "export-hf"])
def test_single_file_outputs_replace_only_a_regular_file_and_only_with_force(tmp_path, spec, config, command):
    out = tmp_path / "out.txt"
    out.write_text("keep me")
    refused(moec(*outputs_of(spec, config)[command], out), "exists", "--force")
    assert out.read_text() == "keep me"
    assert moec(*outputs_of(spec, config)[command], out, "--force").exit_code == 0
    assert out.read_text() != "keep me" and not stat.S_ISLNK(os.lstat(out).st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_new_files_and_folders_take_their_modes_from_the_umask(tmp_path, spec, config, umask):
    previous = os.umask(umask)
    try:
        assert moec("build", spec, "-o", tmp_path / "out", "--weights").exit_code == 0
        assert moec("import-hf", config, "-o", tmp_path / "spec.yaml").exit_code == 0
        assert moec("export-hf", spec, "-o", tmp_path / "config-out.json").exit_code == 0
    finally:
        os.umask(previous)
    files = [*(tmp_path / "out").iterdir(), tmp_path / "spec.yaml", tmp_path / "config-out.json"]
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask, f
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o777 & ~umask


def test_sigterm_while_writing_removes_the_partial_output(tmp_path, spec, monkeypatch):
    import safetensors.torch

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(safetensors.torch, "save_file", terminated)
    result = moec("build", spec, "-o", tmp_path / "out", "--weights")
    assert result.exit_code == 128 + signal.SIGTERM
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.yaml"]


KILLED_MID_WRITE = """
import os, signal, sys
import safetensors.torch
def killed(tensors, path, metadata=None):
    open(path, "wb").write(b"half a checkpoint")
    os.kill(os.getpid(), signal.SIGKILL)
safetensors.torch.save_file = killed
from moec.cli import cli
from tests.tiny_specs import TINY_MOE
cli(sys.argv[1:])
"""


def test_an_output_left_by_sigkill_is_never_taken_for_complete_and_is_swept_next_run(tmp_path, spec):
    out = tmp_path / "out"
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_MID_WRITE, "build", str(spec), "-o", str(out), "--weights"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL
    assert not out.exists()  # the half-written folder never took the output's name
    partial = [p.name for p in tmp_path.iterdir() if "moec-partial" in p.name]
    assert len(partial) == 1 and partial[0].startswith(".out.")
    result = moec("build", spec, "-o", out)
    assert result.exit_code == 0, result.output
    assert f"removed {tmp_path / partial[0]}" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "tiny.yaml"]


def test_a_force_build_killed_between_its_renames_is_repaired_next_run(tmp_path, spec):
    out = tmp_path / "out"
    assert moec("build", spec, "-o", out).exit_code == 0
    before = snapshot(out)
    moved = tmp_path / ".out.moec-replaced-0123456789ab"
    out.rename(moved)  # where a --force build moves the old folder before renaming the new one in
    result = moec("build", spec, "-o", tmp_path / "elsewhere")
    assert result.exit_code == 0 and moved.exists()  # another output's run leaves it alone
    result = moec("build", spec, "-o", out)
    assert "restored" in result.output
    assert result.exit_code == 2 and "--force" in result.output  # the restored build is there again
    assert snapshot(out) == before and not moved.exists()


def test_disk_full_while_writing_a_single_file_is_one_clean_line(tmp_path, config, monkeypatch):
    import errno

    import moec.output_files as output_files

    def full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(output_files, "write_new_file", full)
    out = tmp_path / "spec.yaml"
    refused(moec("import-hf", config, "-o", out), str(out), "No space left on device")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


@pytest.mark.parametrize("command", ["import-hf", "export-hf"])
def test_force_never_overwrites_the_commands_own_input(tmp_path, spec, config, command):
    source = config if command == "import-hf" else spec
    before = source.read_bytes()
    refused(moec(command, source, "-o", source, "--force"), "is the input")
    assert source.read_bytes() == before
