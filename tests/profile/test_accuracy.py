"""`stage_accuracy`: when the test-split pass a stage recorded stands for the profile's on a backend."""

from types import SimpleNamespace

from deploybench.profile.accuracy import ACCURACY_BATCH_SIZE, stage_accuracy

ENV = dict(cpu_model="x", libraries={"torch": "2.14.1"}, commit="0123abc", threads=2, load_avg_1m=0.3)
SCORES = dict(accuracy_top1=0.9, accuracy_top5=0.99, test_images=20)


def _variant(config=None, **by):
    record = dict(dict(backend="ort-cpu", batch_size=ACCURACY_BATCH_SIZE, threads=2, environment=ENV), **by)
    return SimpleNamespace(config=config or {}, metrics=dict(SCORES, accuracy_evaluated_by=record))


def test_the_stages_pass_stands_only_for_the_same_pass_on_the_same_data_code_and_machine():
    def taken(variant, backend="ort-cpu", batch=ACCURACY_BATCH_SIZE, env=ENV, data=None):
        return stage_accuracy(variant, backend, batch, dict(env, load_avg_1m=1.7), data)

    published = _variant()  # the published files: no data key on either side
    assert taken(published) == dict(SCORES, accuracy_batch_size=ACCURACY_BATCH_SIZE, accuracy_source="stage")
    assert taken(_variant({"data_sha256": "ab"}), data="ab")["accuracy_top1"] == 0.9
    for refused in (
        taken(published, backend="openvino-cpu"),
        taken(published, batch=ACCURACY_BATCH_SIZE // 2),
        taken(published, env=dict(ENV, threads=1)),
        taken(published, env=dict(ENV, cpu_model="y")),
        taken(published, env=dict(ENV, libraries={"torch": "2.14.0"})),
        taken(published, data="ab"),  # measured on other files than the variant was made with
        taken(_variant({"data_sha256": "ab"})),
        taken(_variant(environment=dict(ENV, commit="0123abc-dirty")), env=dict(ENV, commit="0123abc-dirty")),
        taken(SimpleNamespace(config={}, metrics=dict(SCORES))),  # made before stages recorded their pass
        taken(SimpleNamespace(config={}, metrics=dict(_variant().metrics, accuracy_top1=None))),
    ):
        assert refused == {}
