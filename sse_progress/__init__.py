"""sse-progress: live progress of long-running jobs, pushed to browsers, terminals and programs."""

from sse_progress.publisher.tracker import AsyncProgressTracker, ProgressTracker, add_progress_arguments

__all__ = ["AsyncProgressTracker", "ProgressTracker", "add_progress_arguments"]
__version__ = "0.2.0"
