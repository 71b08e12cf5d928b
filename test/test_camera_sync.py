"""CameraSync: depth images paired with the CameraInfo of their stamp, on stamps alone (no ROS)."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

from ukpgan_ros.camera_sync import CameraSync, Paired, Unpaired, intrinsics_key
from ukpgan_ros.transforms import stamp_ns

S = 1_000_000_000  # ns per second


def info(fx: float = 500.0, width: int = 640, height: int = 480):
    return SimpleNamespace(k=[fx, 0, 320, 0, fx, 240, 0, 0, 1], p=[fx, 0, 320, 0, 0, fx, 240, 0, 0, 0, 1, 0],
                           width=width, height=height, binning_x=0, binning_y=0,
                           roi=SimpleNamespace(x_offset=0, y_offset=0, width=0, height=0))


def image(name: str):
    return SimpleNamespace(name=name)


def test_info_first_pairs_on_arrival_of_the_image():
    sync = CameraSync(timeout_s=0.5)
    i1 = info(500)
    assert sync.add_info(10 * S, i1, now=0.0) == []
    out = sync.add_image(10 * S, image("a"), now=0.01)
    assert out == [Paired(out[0].image, i1, 10 * S, "stamp")]


def test_image_first_waits_for_its_own_info():
    sync = CameraSync(timeout_s=0.5)
    sync.add_info(9 * S, info(400), now=0.0)  # an older stamp: not this image's
    assert sync.add_image(10 * S, image("a"), now=0.0) == []
    assert sync.waiting == 1 and sync.next_deadline() == pytest.approx(0.5)
    assert sync.poll(0.2) == []
    mine = info(500)
    out = sync.add_info(10 * S, mine, now=0.3)
    assert len(out) == 1 and out[0].info is mine and out[0].how == "stamp" and sync.waiting == 0


def test_an_info_published_once_is_used_after_the_timeout_then_at_once():
    sync = CameraSync(timeout_s=0.5)
    latched = info(500)
    sync.add_info(1 * S, latched, now=0.0)
    assert sync.add_image(2 * S, image("a"), now=0.0) == []
    assert sync.add_image(3 * S, image("b"), now=0.1) == []  # queued behind "a"
    out = sync.poll(0.5)
    assert [(p.image.name, p.how) for p in out] == [("a", "latest"), ("b", "latest")]
    assert all(p.info is latched for p in out) and sync.fixed
    out = sync.add_image(4 * S, image("c"), now=0.6)
    assert [(p.image.name, p.how) for p in out] == [("c", "latest")]
    # An image whose own info is already there still gets it.
    own = info(500)
    sync.add_info(5 * S, own, now=0.7)
    assert sync.add_image(5 * S, image("d"), now=0.7)[0].info is own


def test_no_info_at_all_is_a_drop_with_the_reason():
    sync = CameraSync(timeout_s=0.25)
    assert sync.add_image(7 * S + 5, image("a"), now=0.0) == []
    out = sync.poll(0.3)
    assert len(out) == 1 and isinstance(out[0], Unpaired)
    assert out[0].reason.startswith("no camera_info for stamp 7.000000005") and "no camera_info received" in out[0].reason


def test_changing_intrinsics_are_never_guessed():
    sync = CameraSync(timeout_s=0.25)
    sync.add_info(S, info(500), now=0.0)
    sync.add_info(S + S // 2, info(600), now=0.0)  # a zoom: the latest is not known to be right
    assert not sync.fixed and not sync.constant_intrinsics()
    sync.add_image(S + 8 * S // 10, image("a"), now=0.0)
    out = sync.poll(1.0)
    assert isinstance(out[0], Unpaired) and "changed" in out[0].reason
    # Once stamps are HORIZON_S past the older CameraInfo, only the latest is kept: constant again.
    sync.add_image(3 * S, image("b"), now=1.0)
    out = sync.poll(2.0)
    assert isinstance(out[0], Paired) and out[0].how == "latest" and out[0].info.k[0] == 600


def test_a_change_of_intrinsics_ends_fixed_mode():
    sync = CameraSync(timeout_s=0.25)
    sync.add_info(1 * S, info(500), now=0.0)
    sync.add_image(2 * S, image("a"), now=0.0)
    assert sync.poll(0.3)[0].how == "latest" and sync.fixed
    sync.add_info(3 * S, info(600), now=0.4)
    assert not sync.fixed
    assert sync.add_image(4 * S, image("b"), now=0.5) == []  # waits for its own again


def test_tolerance_pairs_the_nearest_info():
    sync = CameraSync(tolerance_s=0.005, timeout_s=0.5)
    far, near = info(400), info(500)
    sync.add_info(10 * S - 4_000_000, far, now=0.0)
    sync.add_info(10 * S + 2_000_000, near, now=0.0)
    out = sync.add_image(10 * S, image("a"), now=0.0)
    assert out[0].info is near
    exact = CameraSync(timeout_s=0.5)
    exact.add_info(10 * S + 1, near, now=0.0)
    assert exact.add_image(10 * S, image("a"), now=0.0) == []


def test_a_lost_info_is_resolved_when_a_newer_image_pairs():
    sync = CameraSync(timeout_s=5.0)
    sync.add_info(1 * S, info(500), now=0.0)
    assert len(sync.add_image(1 * S, image("a"), now=0.0)) == 1
    assert sync.add_image(2 * S, image("b"), now=0.1) == []  # its info is lost
    own = info(500)
    sync.add_info(3 * S, own, now=0.2)
    out = sync.add_image(3 * S, image("c"), now=0.2)
    assert [(p.image.name, p.how) for p in out] == [("b", "latest"), ("c", "stamp")] and out[1].info is own


def test_clear_counts_the_waiting_images():
    sync = CameraSync()
    sync.add_image(1 * S, image("a"), now=0.0)
    sync.add_image(2 * S, image("b"), now=0.0)
    assert sync.clear() == 2 and sync.waiting == 0 and not sync.fixed


def test_every_image_comes_out_once_in_stamp_order_with_its_own_intrinsics():
    """Random interleavings of a 20 Hz camera whose intrinsics change every frame and whose
    CameraInfo comes before or after the image, or is lost: each image leaves exactly once, in
    stamp order, and with its own CameraInfo whenever that arrived first, or within a timeout
    longer than the skew (shorter ones may time out into fixed-intrinsics mode)."""
    rng = random.Random(0)
    step = S // 20
    for trial in range(500):
        timeout = rng.choice([0.0, 0.05, 0.5])
        sync = CameraSync(timeout_s=timeout)
        n = rng.randint(1, 15)
        events, info_delay = [], {}
        t = last_info = 0.0
        for i in range(n):
            t += rng.uniform(0.0, 0.1)
            events.append((t, 1, i))
            if rng.random() < 0.2:
                continue  # lost
            last_info = max(last_info + 1e-6, t + rng.uniform(-0.08, 0.08))  # one publisher: in order
            info_delay[i] = last_info - t
            events.append((last_info, 0 if rng.random() < 0.5 else 2, i))  # ties: either first
        events.sort(key=lambda e: (e[0], e[1]))
        out = []
        for when, kind, i in events:
            if kind == 1:
                out += sync.add_image(i * step, image(i), now=when)
            else:
                out += sync.add_info(i * step, info(500 + i), now=when)
        out += sync.poll(1e9)
        names = [ev.image.name for ev in out]
        assert names == list(range(n)), (trial, names)
        for ev in out:
            i = ev.image.name
            own = i in info_delay and (info_delay[i] <= 0 or (timeout == 0.5 and info_delay[i] <= timeout))
            if own or (isinstance(ev, Paired) and ev.how == "stamp"):
                assert isinstance(ev, Paired) and ev.how == "stamp" and ev.info.k[0] == 500 + i, (trial, ev)
            elif isinstance(ev, Unpaired):
                assert ev.reason.startswith(f"no camera_info for stamp {i * step // S}.")


def test_stamps_and_keys():
    assert stamp_ns(SimpleNamespace(sec=3, nanosec=7)) == 3 * S + 7
    assert intrinsics_key(info(500)) == intrinsics_key(info(500)) != intrinsics_key(info(500, width=320))
    assert intrinsics_key(SimpleNamespace(K=[1.0] * 9)) != intrinsics_key(SimpleNamespace(K=[2.0] * 9))
    with pytest.raises(ValueError):
        CameraSync(timeout_s=-1)


def test_a_late_info_for_a_guessed_image_ends_fixed_mode():
    sync = CameraSync(timeout_s=0.1)
    sync.add_info(1 * S, info(500), now=0.0)
    sync.add_image(2 * S, image("a"), now=0.0)
    assert sync.poll(0.2)[0].how == "latest" and sync.fixed
    assert sync.add_image(3 * S, image("b"), now=0.3)[0].how == "latest"
    sync.add_info(3 * S, info(500), now=0.35)  # b's own, late: this camera has one per image
    assert not sync.fixed
    assert sync.add_image(4 * S, image("c"), now=0.4) == []
