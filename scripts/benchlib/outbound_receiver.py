"""W8's receiver: an ASGI app that answers every POST 200 at once (run under uvicorn, in a
process of its own, so that it takes no interpreter time from the engine it measures)."""


async def app(scope, receive, send):  # the bare ASGI interface
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]}
    )
    await send({"type": "http.response.body", "body": b""})
