"""Tests of the data windows: the next-window rule and how a window reads."""
import pytest

from tfx_pipeline import windows


def test_the_first_window_starts_at_zero_and_ends_at_the_last_whole_second():
  assert windows.next_window(None, now=1_700_000_000.7) == windows.Window(
      span=1, begin=0.0, end=1_700_000_000.0)


def test_windows_follow_one_another_without_gap_or_overlap():
  last = windows.TrainedWindow(span=3, end=1_700_000_000.0)
  assert windows.next_window(last, now=1_700_000_000.9) is None  # No whole second since.
  following = windows.next_window(last, now=1_700_000_042.5)
  assert following == windows.Window(span=4, begin=1_700_000_000.0, end=1_700_000_042.0)


def test_a_window_reads_as_iso_times():
  window = windows.Window(span=2, begin=1_700_000_000.0, end=1_700_003_600.0)
  assert str(window) == "span 2: [2023-11-14T22:13:20Z, 2023-11-14T23:13:20Z)"
  assert windows.Window(**window.to_dict()) == window


def test_modes_are_checked():
  assert windows.check_mode(windows.RETRAIN) == "retrain"
  with pytest.raises(ValueError, match="mode must be"):
    windows.check_mode("nightly")


def test_a_lateness_margin_leaves_the_newest_seconds_to_the_next_window():
  last = windows.TrainedWindow(span=3, end=1_700_000_000.0)
  assert windows.next_window(last, now=1_700_000_400.5, lateness=300.0) == windows.Window(
      span=4, begin=1_700_000_000.0, end=1_700_000_100.0)
  assert windows.next_window(last, now=1_700_000_200.0, lateness=300.0) is None
  with pytest.raises(ValueError, match="lateness"):
    windows.next_window(last, now=1_700_000_400.0, lateness=-1.0)
