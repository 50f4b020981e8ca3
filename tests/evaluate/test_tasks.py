"""The task registry: every task loads from the sample's tables, and a new task is one entry."""

from __future__ import annotations

import numpy as np
import pytest

from ecgssl.config import ConfigError, params_from_dict
from ecgssl.errors import EcgsslError
from ecgssl.evaluate import tasks
from ecgssl.evaluate.tasks import TASKS, TaskSpec, load_task


@pytest.mark.parametrize("name", ["cinc2017-af", "mitdb-aami", "cinc2020-dx"])
def test_registered_tasks_load_their_labels(tables, name):
    spec = TASKS[name]
    t = load_task(name, tables[spec.dataset])
    assert len(t.classes) and len(t.x) == len(t.y) == len(t.split)
    if spec.multilabel:
        assert t.y.shape == (len(t.x), len(t.classes)) and set(np.unique(t.y)) <= {0.0, 1.0}
    else:
        assert t.y.dtype == np.int64 and t.y.max() < len(t.classes)
    if spec.classes:                       # a fixed order is kept (absent classes dropped)
        assert t.classes == [c for c in spec.classes if c in t.classes]


def test_mitdb_classes_and_windows_without_beats_of_a_class(tables):
    t = load_task("mitdb-aami", tables["mitdb"])
    assert t.classes[0] == "N" and set(t.classes) <= set("NSVFQ")
    assert TASKS["mitdb-aami"].level == "window" and TASKS["cinc2017-af"].level == "record"


def test_a_new_task_is_one_registry_entry(tables, monkeypatch):
    # Challenge 2017 "AF or not", as a user would add it: one TaskSpec, nothing else.
    monkeypatch.setitem(TASKS, "cinc2017-afonly", TaskSpec(
        "cinc2017", classes=("A",), label_map=lambda table: {"A": "A"}, keep_unlabelled=True))
    t = load_task("cinc2017-afonly", tables["cinc2017"])
    full = load_task("cinc2017-af", tables["cinc2017"])
    assert t.classes == ["A"] and len(t.x) == len(full.x)
    np.testing.assert_array_equal(t.y[:, 0] == 1, full.y == full.classes.index("A"))
    # params.yaml validation reads the same registry
    assert params_from_dict({"pipeline": {"tasks": ["cinc2017-afonly"]}}).pipeline.tasks == \
        ["cinc2017-afonly"]
    monkeypatch.delitem(TASKS, "cinc2017-afonly")
    with pytest.raises(ConfigError, match="unknown 'cinc2017-afonly'"):
        params_from_dict({"pipeline": {"tasks": ["cinc2017-afonly"]}})


def test_unknown_task_and_wrong_table_are_clear_errors(tables):
    with pytest.raises(EcgsslError, match="unknown task 'nope'; choose one of cinc2017-af"):
        tasks.get_task("nope")
    with pytest.raises(EcgsslError, match="has no mitdb rows"):
        load_task("mitdb-aami", tables["cinc2017"])


# --- user tasks (params.yaml evaluate.tasks) -------------------------------------------------

USER = {"evaluate": {"tasks": {
    "af-vs-rest": {"dataset": "cinc2017", "classes": ["A", "N"], "multilabel": True},
    "rhythm-present": {"dataset": "cinc2017", "classes": "all present", "multilabel": False,
                       "level": "record"}}},
    "pipeline": {"tasks": ["af-vs-rest", "cinc2017-af"]}}


def test_user_tasks_from_params_are_tasks_everywhere(tables, monkeypatch):
    p = params_from_dict(USER)                          # pipeline.tasks may name them
    assert p.pipeline.tasks == ["af-vs-rest", "cinc2017-af"]
    for name in p.evaluate.tasks:
        monkeypatch.delitem(TASKS, name, raising=False)
    monkeypatch.setattr(tasks, "TASKS", dict(TASKS))    # the merge below stays in this test
    merged = tasks.add_user_tasks(p.evaluate.tasks)
    assert {"af-vs-rest", "rhythm-present", "cinc2017-af"} <= set(merged)
    t = load_task("af-vs-rest", tables["cinc2017"])
    assert t.classes == ["A", "N"] and t.multilabel and t.y.shape[1] == 2
    # "all present": the labels of the train split, in sorted order, one class per row
    t = load_task("rhythm-present", tables["cinc2017"])
    train_labels = {c for c, s in zip(np.array(t.classes)[t.y], t.split) if s == "train"}
    assert t.classes == sorted(train_labels) and t.y.dtype == np.int64
    assert merged["rhythm-present"].level == "record"


@pytest.mark.parametrize("raw,message", [
    ({"pipeline": {"tasks": ["nope"]}}, "unknown 'nope'"),
    ({"evaluate": {"tasks": {"cinc2017-af": {"dataset": "cinc2017"}}}}, "built-in task"),
    ({"evaluate": {"tasks": {"x": {"dataset": "d", "classes": []}}}}, "non-empty list"),
    ({"evaluate": {"tasks": {"x": {"dataset": "d", "level": "beat"}}}}, "'record' or 'window'"),
    ({"evaluate": {"tasks": {"x": {"classes": ["A"]}}}}, "evaluate.tasks.x.dataset"),
])
def test_bad_user_tasks_are_refused_with_the_key_named(raw, message):
    with pytest.raises(ConfigError, match=message):
        params_from_dict(raw)


def test_an_external_test_table_does_not_add_classes(tables, table_copy):
    # "every class present" of a built-in task is read from the data the model is trained and
    # validated on: a code that only the external test table (--test-data) has is not a class
    # (no train positive: it cannot be learned, and the label space would follow test labels).
    import pyarrow as pa
    unseen = "999999999"
    other = table_copy(tables["cinc2020"], "labels", lambda t: pa.array(
        [[*labs, unseen] for labs in t.column("labels").to_pylist()],
        t.schema.field("labels").type))
    own = load_task("cinc2020-dx", tables["cinc2020"])
    t = load_task("cinc2020-dx", tables["cinc2020"], test_table=other)
    assert unseen not in t.classes
    assert set(t.classes) <= set(own.classes) and len(t.part("test"))
