"""The direct target's model cache (model_cache.py): a hit skips the build and gives the same frames, a
changed checkpoint or config misses, a corrupt entry is rebuilt with a warning, concurrent writers both
succeed, --no_cache bypasses and --clear_cache empties.

Every test points FOMM_CACHE_DIR at its own tmp_path (conftest points it at a session folder for the rest
of the suite), so nothing is written to the user's ~/.cache.
"""
import json
import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest
import yaml

from conftest import REPO, assert_one_line_error, load_fixture, read_png_frames, run_args, run_main_in_fresh_process, stderr_lines

import animate
import model_cache
import precision
import run

FIXTURE = "zero_order"  # the smallest model: a build is most of a run's time


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv(model_cache.ENV_VAR, str(folder))
    return folder


@pytest.fixture
def builds(monkeypatch):
    """Counts the calls of the builder the cache stands in for (animate.direct_modules)."""
    calls = []
    build = animate.direct_modules

    def counted(*args, **kwargs):
        calls.append(args)
        return build(*args, **kwargs)

    monkeypatch.setattr(animate, "direct_modules", counted)
    return calls


def render(tmp_path, name, *extra, fixture=FIXTURE, checkpoint=None, config=None):
    """run.py on a fixture (relative + adapt) into tmp_path/name/; returns the frames written."""
    fx = load_fixture(fixture)
    args = run_args(fx, tmp_path / name, "--relative", "--adapt", *extra)
    if checkpoint is not None:
        args[args.index("--checkpoint") + 1] = str(checkpoint)
    if config is not None:
        args[args.index("--config") + 1] = str(config)
    assert run.main(args) == 0
    return read_png_frames(tmp_path / name)


def entries(folder):
    return sorted(name for name in os.listdir(folder) if model_cache.is_entry_name(name)) if folder.exists() else []


def copied_checkpoint(tmp_path, fixture=FIXTURE):
    path = tmp_path / "model.pth.tar"
    shutil.copy(load_fixture(fixture).checkpoint(), path)
    return path


def test_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(model_cache.ENV_VAR, str(tmp_path / "here"))
    assert model_cache.cache_folder() == str(tmp_path / "here")
    monkeypatch.delenv(model_cache.ENV_VAR)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert model_cache.cache_folder() == str(tmp_path / "xdg" / "first-order-model-tf")


@pytest.mark.parametrize("fixture", ["vox", FIXTURE])
def test_a_hit_does_not_build_and_gives_identical_frames(tmp_path, cache, builds, fixture):
    uncached = render(tmp_path, "uncached", "--no_cache", fixture=fixture)
    first = render(tmp_path, "first", fixture=fixture)
    assert len(builds) == 2 and len(entries(cache)) == 1
    second = render(tmp_path, "second", fixture=fixture)
    assert len(builds) == 2, "a cache hit called the builder"
    np.testing.assert_array_equal(first, uncached)
    np.testing.assert_array_equal(second, uncached)


def test_an_entry_records_its_key_and_files(tmp_path, cache):
    render(tmp_path, "frames")
    (entry,) = entries(cache)
    manifest = yaml.safe_load((cache / entry / model_cache.MANIFEST).read_text())  # JSON is YAML
    assert set(manifest) == {"key", "tensorflow", "files"}
    assert set(manifest["key"]) == {"format", "checkpoint", "config", "code_sha256", "options"}
    assert set(manifest["key"]["checkpoint"]) == {"size", "mtime_ns", "inode", "tensors_sha256"}
    assert any(path.endswith("saved_model.pb") for path in manifest["files"])
    assert not [name for name in os.listdir(cache) if name.startswith(model_cache.TEMP_PREFIX)]


def test_a_touched_checkpoint_misses(tmp_path, cache, builds):
    checkpoint = copied_checkpoint(tmp_path)
    render(tmp_path, "first", checkpoint=checkpoint)
    stat = os.stat(checkpoint)
    os.utime(checkpoint, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    render(tmp_path, "second", checkpoint=checkpoint)
    assert len(builds) == 2 and len(entries(cache)) == 2


def test_a_rewritten_checkpoint_misses(tmp_path, cache, builds):
    checkpoint = copied_checkpoint(tmp_path)
    render(tmp_path, "first", checkpoint=checkpoint)
    shutil.copy(load_fixture(FIXTURE).checkpoint("zip"), checkpoint)  # same tensors, new file
    render(tmp_path, "second", checkpoint=checkpoint)
    assert len(builds) == 2


def test_the_key_follows_the_tensors_read(tmp_path):
    import checkpoint_loader

    fx = load_fixture(FIXTURE)
    state = checkpoint_loader.load_state_dicts(fx.checkpoint())
    changed = {name: dict(tensors) for name, tensors in state.items()}
    key = next(iter(changed["generator"]))
    changed["generator"][key] = changed["generator"][key] + 1
    assert model_cache.tensors_digest(state) != model_cache.tensors_digest(changed)


def test_a_changed_config_misses(tmp_path, cache, builds):
    fx = load_fixture(FIXTURE)
    checkpoint = copied_checkpoint(tmp_path)
    render(tmp_path, "first", checkpoint=checkpoint)
    config = yaml.safe_load(fx.config_path.read_text())
    config["model_params"]["kp_detector_params"]["temperature"] = 0.2  # no weight changes, the graph does
    changed = tmp_path / "changed-256.yaml"
    changed.write_text(yaml.safe_dump(config))
    render(tmp_path, "second", checkpoint=checkpoint, config=changed)
    assert len(builds) == 2 and len(entries(cache)) == 2


def test_prescale_is_its_own_entry(tmp_path, cache, builds):
    render(tmp_path, "plain")
    render(tmp_path, "prescale", "--prescale")
    assert len(builds) == 2 and len(entries(cache)) == 2


@pytest.mark.skipif(not precision.native("bfloat16"), reason="this CPU runs bfloat16 only emulated: "
                                                                 "--precision bfloat16 falls back to float32")
def test_bfloat16_is_its_own_entry_and_a_hit_gives_its_frames(tmp_path, cache, builds):
    uncached = render(tmp_path, "uncached", "--precision", "bfloat16", "--no_cache", fixture="vox")
    render(tmp_path, "float32", fixture="vox")
    first = render(tmp_path, "first", "--precision", "bfloat16", fixture="vox")
    second = render(tmp_path, "second", "--precision", "bfloat16", fixture="vox")
    assert len(builds) == 3 and len(entries(cache)) == 2, "bfloat16 shares float32's entry or missed on its own"
    np.testing.assert_array_equal(first, uncached)
    np.testing.assert_array_equal(second, uncached)


def test_a_corrupt_entry_is_rebuilt_with_a_warning(tmp_path, cache, builds, capsys):
    reference = render(tmp_path, "first")
    (entry,) = entries(cache)
    data = next((cache / entry / model_cache.SAVED_MODEL / "variables").glob("variables.data-*"))
    corrupt = bytearray(data.read_bytes())
    corrupt[len(corrupt) // 2] ^= 0xFF  # one flipped byte, same size: only the digest sees it
    data.write_bytes(bytes(corrupt))
    capsys.readouterr()
    again = render(tmp_path, "second")
    warnings = [line for line in stderr_lines(capsys.readouterr().err) if "corrupt" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: model cache entry") and "rebuilding" in warnings[0]
    assert len(builds) == 2
    np.testing.assert_array_equal(again, reference)
    render(tmp_path, "third")  # the rebuilt entry is trusted again
    assert len(builds) == 2


def test_a_garbled_manifest_is_rebuilt(tmp_path, cache, builds, capsys):
    render(tmp_path, "first")
    (entry,) = entries(cache)
    (cache / entry / model_cache.MANIFEST).write_text("{not json")
    render(tmp_path, "second")
    assert "corrupt" in capsys.readouterr().err and len(builds) == 2


def test_an_entry_from_another_tensorflow_is_rebuilt_without_a_warning(tmp_path, cache, builds, capsys):
    # The TensorFlow version is the manifest's, not the key's (the key is made before TensorFlow imports).
    render(tmp_path, "first")
    (entry,) = entries(cache)
    manifest_path = cache / entry / model_cache.MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest["tensorflow"] = "2.0.0"
    manifest_path.write_text(json.dumps(manifest))
    capsys.readouterr()
    render(tmp_path, "second")
    err = capsys.readouterr().err
    assert "written by TensorFlow 2.0.0; rebuilding it" in err and "warning" not in err
    assert len(builds) == 2 and entries(cache) == [entry]
    assert json.loads(manifest_path.read_text())["tensorflow"] != "2.0.0"


def test_the_entry_is_verified_while_tensorflow_imports(tmp_path, cache, monkeypatch):
    render(tmp_path, "first")  # fills the cache
    seen = {}
    verify = model_cache.ModelCache.verify

    def watched(self, key):
        seen["thread"] = threading.current_thread().name
        return verify(self, key)

    monkeypatch.setattr(model_cache.ModelCache, "verify", watched)
    render(tmp_path, "second")
    assert seen["thread"].startswith("cache-entry"), seen


def test_the_generator_loads_on_a_thread_and_a_failure_there_is_one_line(tmp_path, cache, builds, monkeypatch,
                                                                         capsys):
    reference = render(tmp_path, "first")
    (entry,) = entries(cache)
    assert sorted(os.listdir(cache / entry)) == sorted([model_cache.MANIFEST, *model_cache.SAVED_MODELS])
    threads, small_loaded = {}, threading.Event()
    load_saved_model = model_cache.ModelCache.load_saved_model

    def watched(path, saved_model):
        threads[saved_model] = threading.current_thread() is threading.main_thread()
        if saved_model == model_cache.GENERATOR_SAVED_MODEL and "fail" in threads:
            small_loaded.wait(30)  # a fixture's generator loads sooner than a real one's
            raise OSError("disk went away")
        calls = load_saved_model(path, saved_model)
        small_loaded.set()
        return calls

    monkeypatch.setattr(model_cache.ModelCache, "load_saved_model", staticmethod(watched))
    np.testing.assert_array_equal(render(tmp_path, "second"), reference)
    assert threads == {model_cache.SAVED_MODEL: True, model_cache.GENERATOR_SAVED_MODEL: False}, threads
    threads["fail"] = True  # its files' digests pass, yet TensorFlow cannot load it: too late to rebuild
    small_loaded.clear()
    capsys.readouterr()
    args = run_args(load_fixture(FIXTURE), tmp_path / "third", "--relative", "--adapt")
    assert_one_line_error(capsys, run.main(args), f"model cache entry {cache / entry} could not be loaded",
                          "OSError", "the next run rebuilds it")
    assert not (tmp_path / "third").exists() or not os.listdir(tmp_path / "third"), "frames written half"
    assert entries(cache) == [] and len(builds) == 1
    del threads["fail"]
    np.testing.assert_array_equal(render(tmp_path, "fourth"), reference)
    assert len(builds) == 2


def test_a_hit_in_a_fresh_process_imports_no_keras(tmp_path, cache):
    # A miss builds with Keras (run.py completes TensorFlow's import then); a hit loads the entry with
    # backends.saved_model_runtime()'s part of TensorFlow alone. Both give the frames of an uncached run.
    uncached = render(tmp_path, "uncached", "--no_cache")
    args = run_args(load_fixture(FIXTURE), tmp_path / "{}", "--relative", "--adapt")
    imported = []
    for name in ("miss", "hit"):
        result = run_main_in_fresh_process([arg.replace("{}", name) for arg in args])
        imported.append(result.stdout.strip().splitlines()[-1])
        np.testing.assert_array_equal(read_png_frames(tmp_path / name), uncached)
    assert imported == ["0 ['keras', 'tensorflow']", "0 ['tensorflow']"], imported


def test_two_processes_filling_the_cache_at_once_both_succeed(tmp_path, cache):
    fx = load_fixture(FIXTURE)
    env = {**os.environ, model_cache.ENV_VAR: str(cache)}
    processes = [subprocess.Popen([sys.executable, str(REPO / "run.py"), *run_args(fx, tmp_path / f"out{i}"),
                                   "--quiet"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for i in range(2)]
    results = [process.communicate(timeout=300) + (process.returncode,) for process in processes]
    for stdout, stderr, code in results:
        assert code == 0, stderr
    np.testing.assert_array_equal(read_png_frames(tmp_path / "out0"), read_png_frames(tmp_path / "out1"))
    assert len(entries(cache)) == 1
    assert os.listdir(cache) == entries(cache), "a temporary folder was left behind"


def test_no_cache_bypasses_the_cache(tmp_path, cache, builds):
    render(tmp_path, "first", "--no_cache")
    render(tmp_path, "second", "--no_cache")
    assert len(builds) == 2
    assert not cache.exists() or not os.listdir(cache)


def test_clear_cache_empties_the_folder_and_says_how_much(tmp_path, cache, capsys):
    render(tmp_path, "first")
    (cache / (model_cache.TEMP_PREFIX + "left-by-a-killed-run")).mkdir()
    capsys.readouterr()
    assert run.main(["--clear_cache"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"cleared the model cache {cache}: freed ") and out.strip().endswith(("kB", "MB"))
    assert os.listdir(cache) == []
