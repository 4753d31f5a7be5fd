"""Progress output: bars on a terminal; in a log (output captured, not a terminal) plain lines, no redraws."""

import io

import deploybench.platform.progress as progress_module
from deploybench.platform.progress import Bar, Lines, progress
from deploybench.store import Workspace


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_bar_on_a_terminal_and_lines_elsewhere(monkeypatch):
    assert isinstance(progress(range(3), desc="x"), Lines)  # pytest captures stdout: not a terminal
    monkeypatch.setattr(progress_module.sys, "stdout", _Terminal())
    monkeypatch.setattr(progress_module.sys, "stderr", _Terminal())
    bar = progress(range(3), desc="x", leave=False)
    assert isinstance(bar, Bar) and list(bar) == [0, 1, 2]
    bar.close()
    assert isinstance(progress(range(3), desc="x", enabled=False), Lines)


def test_lines_print_milestones_only():
    logged = []
    lines = progress(["a", "b"], desc="chains", log=logged.append, unit="chain", mininterval=1.0)
    for item in lines:
        lines.set_postfix(loss="0.1")  # per step: nothing
        lines.set_postfix_str(item)
        lines.milestone(f"{item} ok")
    lines.write("a line")
    lines.close()
    assert logged == ["chains 1/2: a ok", "chains 2/2: b ok", "a line"]
    silent = progress(range(2), desc="quiet", log=logged.append, enabled=False)
    silent.milestone("nothing")
    assert list(silent) == [0, 1] and len(logged) == 3


def test_training_in_a_log_prints_one_line_per_epoch(tmp_path, tiny_fashion_mnist, capsys):
    from deploybench.train.recipes import default_recipe
    from deploybench.train.run import train_model

    recipe = default_recipe("simple-cnn", epochs=3, batch_size=8)  # 8 steps an epoch
    train_model(Workspace(tmp_path / "ws"), "simple-cnn", "fashion-mnist", recipe, data_dir=tiny_fashion_mnist)
    captured = capsys.readouterr()
    assert "\r" not in captured.out + captured.err  # no bar redrawn into the log
    lines = captured.out.splitlines() + captured.err.splitlines()
    assert [line.split(":")[0] for line in lines if line.startswith("epoch ")] == ["epoch 1", "epoch 2", "epoch 3"]
    assert len(lines) == 3 + 2  # the run's first line, one per epoch, the test result
