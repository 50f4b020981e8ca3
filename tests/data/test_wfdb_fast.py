"""The fast WFDB path reads the same numbers, names and rates as wfdb.rdrecord."""

from __future__ import annotations

import numpy as np
import pytest
import wfdb

from ecgssl.data import wfdb_fast
from ecgssl.data.sources.base import list_records


@pytest.mark.parametrize("source", ["ptbxl", "mitdb", "cinc2017", "cinc2020"])
def test_fast_path_equals_wfdb_on_every_bundled_record(sample, source):
    root = sample / source
    records = (["records100/00000/00001_lr"] if source == "ptbxl" else list_records(root))
    for rec in records:
        sig, h = wfdb_fast.read_record(root / rec)
        ref = wfdb.rdrecord(str(root / rec))
        assert h.sig_name == ref.sig_name and h.fs == ref.fs and h.units == ref.units
        assert h.comments == ref.comments
        np.testing.assert_allclose(sig.T, ref.p_signal, rtol=1e-6, atol=1e-6, err_msg=rec)


def test_other_layouts_are_left_to_wfdb(tmp_path):
    d = np.arange(200, dtype=np.int32).reshape(100, 2)
    wfdb.wrsamp("r", fs=250, units=["mV", "mV"], sig_name=["I", "II"], d_signal=d,
                fmt=["24", "24"], adc_gain=[200.0, 200.0], baseline=[0, 0], write_dir=str(tmp_path))
    with pytest.raises(wfdb_fast.Unsupported):
        wfdb_fast.read_record(tmp_path / "r")
