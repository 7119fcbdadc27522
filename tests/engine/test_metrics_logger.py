"""After a resume, the TensorBoard writer purges the steps a killed run had already written."""
import glob
import os
import struct

from tensorboardX.proto import event_pb2

from cwpo_jax.train.metrics import MetricsLogger


def read_events(path):
    with open(path, "rb") as f:
        data = f.read()
    events, pos = [], 0
    while pos < len(data):
        (length,) = struct.unpack("<Q", data[pos:pos + 8])
        event = event_pb2.Event()
        event.ParseFromString(data[pos + 12:pos + 12 + length])
        events.append(event)
        pos += 12 + length + 4
    return events


def test_resumed_logger_purges_later_steps(tmp_path):
    first = MetricsLogger(str(tmp_path), name="t", total_steps=5, stream=open(os.devnull, "w"))
    for step in range(1, 6):
        first.log(step, {"loss": float(step)})
    first.close()
    resumed = MetricsLogger(str(tmp_path), name="t", total_steps=5, stream=open(os.devnull, "w"))
    resumed.log(3, {"loss": 30.0})
    resumed.close()
    files = sorted(glob.glob(str(tmp_path / "tensorboard" / "events.*")), key=os.path.getmtime)
    purge = [e for e in read_events(files[-1]) if e.HasField("session_log")]
    assert purge and purge[0].session_log.status == event_pb2.SessionLog.START
    assert purge[0].step == 3  # TensorBoard drops earlier events with step >= 3
