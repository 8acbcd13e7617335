"""Helpers shared by both drivers. Imported from each side's own process (the script folder is on sys.path),
so this module must never import `cortex`: it needs only the standard library, numpy, pandas, torch and
Lightning's `Callback` (present in Lightning 1.9 and 2.x)."""

from __future__ import annotations

import cProfile
import io
import json
import os
import pstats
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[2]
GFP = REPO / "data" / "gfp_sarkisyan2016.csv.gz"


def load_gfp(num_rows: int, seed: int = 0) -> pd.DataFrame:
    """`num_rows` real GFP variants (no stop codon), shuffled with `seed`: columns sequence, log_brightness.
    Both sides call this with the same arguments, so they train on the same rows."""
    frame = pd.read_csv(GFP, usecols=["sequence", "log_brightness"])
    frame = frame[~frame["sequence"].str.contains(r"\*", regex=True)].dropna()
    if num_rows > len(frame):
        raise ValueError(f"num_rows={num_rows}; the GFP table has only {len(frame)} usable rows")
    return frame.sample(n=num_rows, random_state=seed).reset_index(drop=True)


def design_seed(length: int) -> str:
    """The wild-type GFP cut to `length` residues (the design seed of workload c)."""
    frame = pd.read_csv(GFP, nrows=1, usecols=["sequence"])
    sequence = frame["sequence"].iloc[0]
    if not 1 <= length <= len(sequence):
        raise ValueError(f"design length={length}; expected 1..{len(sequence)} (the GFP length)")
    return sequence[:length]


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def kernel_busy_fraction(trace_path: str | os.PathLike, wall_s: float) -> float:
    """Share of `wall_s` during which at least one GPU kernel ran: the union of the kernel intervals of a
    torch.profiler chrome trace (events with cat "kernel"; ts and dur in microseconds) over the wall time."""
    with open(trace_path) as handle:
        events = json.load(handle)["traceEvents"]
    spans = sorted(
        (float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0.0)))
        for e in events
        if e.get("cat") == "kernel" and "ts" in e
    )
    busy, end = 0.0, -float("inf")
    for start, stop in spans:
        if stop <= end:
            continue
        busy += stop - max(start, end)
        end = stop
    return busy / 1e6 / wall_s


SYNC_STEPS = 5  # steps after the profile over which host-device synchronisations are counted


def make_timer(
    base: type,
    device: str,
    warmup_steps: int,
    measure_steps: int,
    profile_steps: int,
    samples_in_batch: Any,
    world_size: int = 1,
    cprofile_path: str | None = None,
) -> Any:
    """A Lightning callback (subclass of `base`, the side's own `Callback`) that times optimisation steps
    warmup_steps .. warmup_steps + measure_steps - 1 (data loading included, warm-up and compilation excluded)
    and then, on CUDA, profiles `profile_steps` more steps for the GPU busy fraction and counts, over
    SYNC_STEPS more, the host-device synchronisations (torch.cuda.set_sync_debug_mode warnings; each one stops
    the host from queueing ahead of the GPU). With `cprofile_path`, the host's Python time over the measured
    steps is profiled (cProfile; compilation and warm-up excluded) and its tables written there. Results in
    `.result`."""

    class StepTimer(base):
        def __init__(self) -> None:
            self.batches = 0
            self.samples = 0
            self.start = None
            self.result: dict[str, Any] = {}
            self.profiler = None
            self.last_end = None
            self.data_wait = 0.0  # seconds between a step's end and the next step's start, measured steps
            self.sync_catcher = None
            self.cprofile = None
            self.sync_records: list | None = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx, *args) -> None:
            # The loop fetches (and moves to the device) the next batch between these two hooks.
            if self.start is not None and self.last_end is not None and "samples_per_s" not in self.result:
                self.data_wait += time.perf_counter() - self.last_end

        def on_train_start(self, trainer, pl_module) -> None:
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, *args) -> None:
            self.last_end = time.perf_counter()
            self.batches += 1
            if self.batches == warmup_steps:
                synchronize(device)
                if cprofile_path:
                    self.cprofile = cProfile.Profile()
                    self.cprofile.enable()
                self.start = time.perf_counter()
            elif (
                self.batches > warmup_steps and self.start is not None and "samples_per_s" not in self.result
            ):
                self.samples += samples_in_batch(batch) * world_size
                if self.batches == warmup_steps + measure_steps:
                    synchronize(device)
                    wall = time.perf_counter() - self.start
                    if self.cprofile is not None:
                        self.cprofile.disable()
                        write_cprofile(
                            self.cprofile, cprofile_path, f"{measure_steps} measured steps, {wall:.3f} s"
                        )
                    self.result.update(
                        samples_per_s=self.samples / wall,
                        measured_steps=measure_steps,
                        measured_s=wall,
                        data_wait_fraction=self.data_wait / wall,
                    )
                    if device.startswith("cuda"):
                        self.result["peak_memory_bytes"] = torch.cuda.max_memory_allocated()
                        if profile_steps > 0:
                            self._start_profile()
                    if "profile_start" not in self.result:
                        trainer.should_stop = True
            elif self.profiler is not None and self.batches == warmup_steps + measure_steps + profile_steps:
                self._stop_profile()
                self._start_sync_count()
            elif (
                self.sync_records is not None
                and self.batches == warmup_steps + measure_steps + profile_steps + SYNC_STEPS
            ):
                self._stop_sync_count()
                trainer.should_stop = True

        def _start_sync_count(self) -> None:
            self.sync_catcher = warnings.catch_warnings(record=True)
            self.sync_records = self.sync_catcher.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")

        def _stop_sync_count(self) -> None:
            torch.cuda.set_sync_debug_mode("default")
            self.sync_catcher.__exit__(None, None, None)
            syncs = [
                f"{r.filename}:{r.lineno}: {r.message}"
                for r in self.sync_records
                if "called a synchronizing" in str(r.message)
            ]
            self.result["syncs_per_step"] = len(syncs) / SYNC_STEPS
            self.result["sync_sites"] = sorted(set(syncs))[:10]  # the Python line each sync was called from
            self.sync_records = None

        def _start_profile(self) -> None:
            from torch.profiler import ProfilerActivity, profile

            self.profiler = profile(activities=[ProfilerActivity.CUDA])
            self.profiler.__enter__()
            synchronize(device)
            self.result["profile_start"] = time.perf_counter()

        def _stop_profile(self) -> None:
            synchronize(device)
            wall = time.perf_counter() - self.result.pop("profile_start")
            self.profiler.__exit__(None, None, None)
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, "trace.json")
                self.profiler.export_chrome_trace(path)
                self.result["gpu_busy"] = kernel_busy_fraction(path, wall)
            self.result["gpu_busy_method"] = "torch.profiler kernel-interval union / wall time"
            self.profiler = None

    return StepTimer()


def write_cprofile(profile: cProfile.Profile, path: str, title: str) -> None:
    """The 40 largest own-time and 60 largest cumulative-time entries of `profile`, as text, into `path`."""
    text = io.StringIO()
    text.write(f"# {title}\n")
    stats = pstats.Stats(profile, stream=text)
    stats.sort_stats("tottime").print_stats(40)
    stats.sort_stats("cumulative").print_stats(60)
    # Who calls the costly leaves (the host profile's open questions: stack formatting, profiler ranges, pickling).
    stats.print_callers(
        r"traceback.py|_record_function|rebuild_storage|module.py:.*__setattr__|generic.py:.*__setattr__|dataclasses.py:.*fields"
    )
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text.getvalue())


def environment(device: str) -> dict[str, Any]:
    info = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "threads": torch.get_num_threads(),
        "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def write_json(path: str, payload: dict[str, Any]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        json.dump(payload, handle, indent=1)
