"""The baseline: a hello-world Flask app, served by gunicorn with the relay's settings.

It answers the benchmark's signed webhook POSTs without verifying or storing them
(reading the body, as any app must), so "relay / hello" is the cost of verification,
a durable commit and logging over bare Flask under the same gunicorn.
"""

from __future__ import annotations

from flask import Flask, Response, jsonify, request

app = Flask("hello")


@app.get("/")
def hello() -> str:
    return "Hello, World!"


@app.post("/webhooks/clerk")
def webhook() -> Response:
    request.get_data()
    return jsonify({"status": "accepted"})
