"""The floor of the raw round trip with pika: pika used as it intends, nothing of this project in between.

    python benchmarks/pika_floor.py --messages 100000 --window 2000

One process publishes N persistent 300-byte messages with pipelined publisher confirms (at most ``--window``
unconfirmed) from pika's own ``SelectConnection`` callbacks, its I/O loop running all the time; another consumes
them with prefetch 1,000, acknowledging every 500. It prints the messages per second, and the CPU microseconds
per message of each process and of RabbitMQ, as one JSON line. ``resync_bench.py``'s raw round trip goes
through the project's broker module instead; the two side by side tell what the module costs over pika's own.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pika

BODY = b"x" * 300
QUEUE, EXCHANGE = "sync.floor", "resync"


def beam_cpu() -> float:
    """CPU seconds RabbitMQ's VM has used so far."""
    pid = subprocess.run(["pgrep", "-f", "beam.smp"], capture_output=True, text=True).stdout.split()[0]
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def consume(url: str, n: int, ready: Any) -> None:
    got = [0]

    def on_message(channel: Any, method: Any, _props: Any, _body: bytes) -> None:
        got[0] += 1
        if got[0] % 500 == 0 or got[0] == n:
            channel.basic_ack(method.delivery_tag, multiple=True)
        if got[0] == n:
            conn.close()

    def on_channel(channel: Any) -> None:
        channel.basic_qos(prefetch_count=1000, callback=lambda _: channel.basic_consume(
            QUEUE, on_message, callback=lambda _: ready.set()))

    conn = pika.SelectConnection(pika.URLParameters(url), on_open_callback=lambda c: c.channel(
        on_open_callback=on_channel), on_close_callback=lambda c, _e: c.ioloop.stop())
    conn.ioloop.start()


def publish(url: str, n: int, window: int) -> None:
    sent, confirmed = [0], [0]
    channels: list[Any] = []

    def fill() -> None:
        while sent[0] < n and sent[0] - confirmed[0] < window:
            sent[0] += 1
            props = pika.BasicProperties(content_type="application/json", delivery_mode=2, type="event",
                                         message_id=f"{sent[0]:032X}", user_id="guest")
            channels[0].basic_publish(EXCHANGE, QUEUE, BODY, props, mandatory=True)

    def on_confirm(frame: Any) -> None:
        tag = frame.method.delivery_tag
        confirmed[0] = tag if frame.method.multiple else max(confirmed[0], tag)
        if confirmed[0] == n:
            conn.close()
        else:
            fill()

    def on_channel(channel: Any) -> None:
        channels.append(channel)
        channel.confirm_delivery(on_confirm, callback=lambda _: fill())

    conn = pika.SelectConnection(pika.URLParameters(url), on_open_callback=lambda c: c.channel(
        on_open_callback=on_channel), on_close_callback=lambda c, _e: c.ioloop.stop())
    conn.ioloop.start()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--window", type=int, default=2_000)
    args = ap.parse_args()
    vhost = f"floor-{uuid.uuid4().hex[:8]}"
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", vhost], check=True)
    subprocess.run(["rabbitmqctl", "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"], check=True)
    url = f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    try:
        setup = pika.BlockingConnection(pika.URLParameters(url))
        channel = setup.channel()  # the project's layout: a durable queue bound to a topic exchange
        channel.exchange_declare(EXCHANGE, "topic", durable=True)
        channel.queue_declare(QUEUE, durable=True, arguments={"x-single-active-consumer": True,
                                                              "x-dead-letter-exchange": "resync.dlx"})
        channel.queue_bind(QUEUE, EXCHANGE, QUEUE)
        setup.close()
        ctx = multiprocessing.get_context("spawn")
        ready = ctx.Event()
        consumer = ctx.Process(target=consume, args=(url, args.messages, ready))
        consumer.start()
        ready.wait(60)
        start, beam = time.monotonic(), beam_cpu()
        mine = resource.getrusage(resource.RUSAGE_SELF)
        publish(url, args.messages, args.window)
        consumer.join()
        elapsed = time.monotonic() - start
        after, child = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)

        def per_message(seconds: float) -> float:
            return round(seconds / args.messages * 1e6, 1)

        print(json.dumps({
            "messages": args.messages, "window": args.window, "round_trip_per_s": round(args.messages / elapsed),
            "cpu_us_per_message": {
                "publisher": per_message(after.ru_utime + after.ru_stime - mine.ru_utime - mine.ru_stime),
                "consumer": per_message(child.ru_utime + child.ru_stime), "rabbitmq": per_message(beam_cpu() - beam)}}))
    finally:
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], check=False)


if __name__ == "__main__":
    main()
