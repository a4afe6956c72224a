"""A TCP relay to PostgreSQL that can cut a connection at one COMMIT.

It stands for a network that fails at the worst moment. Either the server receives the
COMMIT and commits, but the client never hears back, or the COMMIT itself is lost. Both
times the client sees its connection closed. The relay listens on 127.0.0.1 only and
forwards to a local test cluster.
"""

from __future__ import annotations

import socket
import threading
import time

# A simple-protocol Query message carrying "COMMIT", as psycopg2 sends it.
COMMIT_QUERY = b"Q\x00\x00\x00\x0bCOMMIT\x00"

SERVER_GRACE_SECONDS = 0.5
"""Time the server gets to carry out the COMMIT before both sides are cut off."""


class CommitReplyDropper:
    """Relay 127.0.0.1:``port`` to ``target_port``, and cut the connection of the next COMMIT after ``arm()``."""

    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._armed = threading.Event()
        self._deliver_commit = True
        self._then_close_all = False
        self.dropped = 0
        self._closed = False
        self._connections: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, deliver_commit: bool = True, then_close_all: bool = False) -> None:
        """Cut the connection of the next COMMIT, on whichever connection it comes.

        With ``deliver_commit`` the server gets the COMMIT and only its reply is lost.
        Without it, the COMMIT never reaches the server. With ``then_close_all`` the relay also
        closes every other connection and takes no new ones, as a database that became
        unreachable.
        """
        self._deliver_commit = deliver_commit
        self._then_close_all = then_close_all
        self._armed.set()

    def close(self) -> None:
        """Take no more connections. The listener is shut down first, which wakes ``accept``."""
        self._closed = True
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self._target_port))
            self._connections += [client, server]
            cut = threading.Event()
            threading.Thread(target=self._to_server, args=(client, server, cut), daemon=True).start()
            threading.Thread(target=self._to_client, args=(server, client, cut), daemon=True).start()

    def _to_server(self, client: socket.socket, server: socket.socket,
                   cut: threading.Event) -> None:
        while True:
            data = self._receive(client)
            if not data:
                break
            if self._armed.is_set() and COMMIT_QUERY in data:
                self._armed.clear()
                cut.set()  # no reply of the server reaches the client from now on
                self.dropped += 1
                if self._then_close_all:
                    # Before the client can notice anything, so that it finds no way back in.
                    self.close()
                    self._close(*[sock for sock in self._connections
                                  if sock is not client and sock is not server])
                if self._deliver_commit:
                    server.sendall(data)
                    time.sleep(SERVER_GRACE_SECONDS)
                break
            server.sendall(data)
        self._close(client, server)

    def _to_client(self, server: socket.socket, client: socket.socket,
                   cut: threading.Event) -> None:
        while True:
            data = self._receive(server)
            if not data or cut.is_set():
                break
            try:
                client.sendall(data)
            except OSError:
                break
        self._close(server, client)

    @staticmethod
    def _receive(sock: socket.socket) -> bytes:
        try:
            return sock.recv(65536)
        except OSError:
            return b""

    @staticmethod
    def _close(*sockets: socket.socket) -> None:
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
