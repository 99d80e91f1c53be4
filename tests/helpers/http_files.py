"""A real HTTP server on 127.0.0.1 that serves files from a dict, for the download tests (no network)."""
import contextlib
import http.server
import socket
import threading


class FileServer:
    """Serves `files[path] = bytes` (404 otherwise); `truncate[path] = n` sends only the first n bytes under the
    full Content-Length, then closes (a broken download). `requests` lists the paths asked for."""

    def __init__(self):
        self.files, self.truncate, self.requests = {}, {}, []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                owner.requests.append(self.path)
                body = owner.files.get(self.path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[:owner.truncate.get(self.path, len(body))])
                self.close_connection = True

            def log_message(self, *args):
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc_info):
        self._server.shutdown()
        self._server.server_close()


def refused_url():
    """A 127.0.0.1 URL on a port nothing listens on (connections are refused)."""
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"
