"""Locust load for benchmarks/bench_server.py: every user uploads sample photos to /api/search, back to back."""

import random
from pathlib import Path

from locust import HttpUser, task

PHOTOS = [p.read_bytes() for p in sorted((Path(__file__).resolve().parents[1] / "data" / "sample").rglob("*.jpg"))]


class Searcher(HttpUser):
    @task
    def search(self) -> None:
        self.client.post("/api/search", files={"image": ("q.jpg", random.choice(PHOTOS), "image/jpeg")},
                         data={"n": "10"})
