"""The environment recorded with measurements: library versions under their alias, what makes two setups equal."""

import importlib.metadata

from deploybench.platform.env import package_version, same_setup


def test_the_gpu_build_of_onnxruntime_reports_its_version(monkeypatch):
    installed = {"onnxruntime-gpu": "1.32.0"}

    def version(name):
        if name not in installed:
            raise importlib.metadata.PackageNotFoundError(name)
        return installed[name]

    monkeypatch.setattr(importlib.metadata, "version", version)
    assert package_version("onnxruntime") == "1.32.0"
    assert package_version("torch") is None


def test_same_setup_needs_a_clean_known_commit_and_ignores_the_load_average():
    env = dict(commit="0123abc", threads=2, libraries={"torch": "2.14.1"}, load_avg_1m=0.1)
    assert same_setup(env, dict(env, load_avg_1m=1.9))
    assert not same_setup(env, dict(env, threads=1))
    assert not same_setup(env, dict(env, libraries={"torch": "2.14.0"}))
    for commit in (None, "0123abc-dirty"):
        assert not same_setup(dict(env, commit=commit), dict(env, commit=commit))
