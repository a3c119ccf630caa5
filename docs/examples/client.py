"""Submit a photo to Snapread and wait for the answer: by polling, or over the WebSocket.

pip install requests websockets
python client.py --token KEY page.jpg           # submit, then poll
python client.py --token KEY --watch page.jpg   # submit, then follow it live
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid

import requests
import websockets

TERMINAL = {"succeeded", "rejected", "failed", "canceled"}


class SnapreadError(Exception):
    """An error answer: `code` is stable, `message` is for people."""

    def __init__(self, status: int, body: dict) -> None:
        super().__init__(f"{status} {body.get('code')}: {body.get('message')}")
        self.status, self.code, self.detail = status, body.get("code"), body.get("detail")


def submit(base: str, token: str, path: str, session: requests.Session | None = None) -> dict:
    """Upload the image; the answer is the queued job. The Idempotency-Key makes a retry
    of this same call safe: it returns the job the first attempt made."""
    http = session or requests.Session()
    headers = {"Authorization": f"Token {token}", "Idempotency-Key": str(uuid.uuid4())}
    with open(path, "rb") as image:
        response = http.post(
            f"{base}/api/v1/jobs/", headers=headers, files={"image": image}, timeout=60
        )
    if response.status_code >= 400:
        raise SnapreadError(response.status_code, response.json())
    return response.json()


def wait_by_polling(
    base: str, token: str, job_id: str, timeout: float = 300,
    session: requests.Session | None = None,
) -> dict:  # fmt: skip
    """Ask until the job is finished, as often as Retry-After says; with If-None-Match an
    unchanged job costs a bodyless 304."""
    http = session or requests.Session()
    deadline = time.monotonic() + timeout
    job, etag = None, None
    while True:
        headers = {"Authorization": f"Token {token}"}
        if etag:
            headers["If-None-Match"] = etag
        response = http.get(f"{base}/api/v1/jobs/{job_id}/", headers=headers, timeout=10)
        if response.status_code == 200:
            job, etag = response.json(), response.headers.get("ETag")
        elif response.status_code != 304:
            raise SnapreadError(response.status_code, response.json())
        if job["status"] in TERMINAL:
            return job
        wait = float(response.headers.get("Retry-After", "1"))
        if time.monotonic() + wait > deadline:
            raise TimeoutError(f"job {job_id} still {job['status']} after {timeout} s")
        time.sleep(wait)


async def wait_by_websocket(base: str, token: str, job_id: str, timeout: float = 300) -> dict:
    """Follow the job live: the first message is its state now, then every change."""
    url = f"{base.replace('http', 'ws', 1)}/ws/jobs/{job_id}/?token={token}"
    async with asyncio.timeout(timeout), websockets.connect(url, origin=base) as socket:
        async for message in socket:
            event = json.loads(message)
            if event["type"] == "deleted":
                raise SnapreadError(404, {"code": "not_found", "message": "Job deleted."})
            job = event["job"]
            print(job["status"], job["stage"] or "")
            if job["status"] in TERMINAL:
                return job
    raise ConnectionError(f"the socket closed before job {job_id} finished")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image")
    parser.add_argument("--token", required=True)
    parser.add_argument("--base", default="http://127.0.0.1:8000")
    parser.add_argument("--watch", action="store_true", help="follow over the WebSocket")
    args = parser.parse_args()

    job = submit(args.base, args.token, args.image)
    if args.watch:
        job = asyncio.run(wait_by_websocket(args.base, args.token, job["id"]))
    else:
        job = wait_by_polling(args.base, args.token, job["id"])
    print(json.dumps({"id": job["id"], "status": job["status"], "error": job["error"]}))
    for region in job["regions"]:
        print(region["index"], region["text"], region["confidence"])


if __name__ == "__main__":
    main()
