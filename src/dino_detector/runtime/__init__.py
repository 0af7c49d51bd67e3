"""The ground floor: process-level plumbing every other package may use and that imports nothing else of
dino_detector (checked by the import-linter layers contract in pyproject.toml; see ARCHITECTURE.md).

checkpoint.py (atomic files, RNG states), distributed.py (torchrun / DDP helpers), device.py (device, seeds,
worker count, autocast dtype), logging.py (console, TensorBoard, JSON files), memory.py (RSS and CUDA
counters), schedule.py (one class for every scheduled scalar)."""
