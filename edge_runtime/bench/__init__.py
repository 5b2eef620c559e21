"""Benchmarks: the runtime core against bare ONNX Runtime, and end to end through a real broker against
the naive paho loop and an echo control. Every figure is reported next to its baseline from the same run."""
