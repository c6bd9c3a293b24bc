"""Exit statuses of every ``sse-progress`` command but ``watch``, after sysexits.h.

One table, so ``serve``, ``token``, ``publish``, ``bridge`` and ``sessions`` mean the same thing by the same number.
argparse's own 2 would read as "cancelled" to a script that runs ``watch``, so usage errors are 64.
"""

EXIT_OK = 0
EXIT_REFUSED = 1  # the request was understood and refused: session already ended, token or event rejected
EXIT_USAGE = 64  # EX_USAGE: unknown option, missing or malformed argument
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE: the store or the server could not be reached, a port is in use, or the
# server is not installed
EXIT_CONFIG = 78  # EX_CONFIG: a setting is missing or unusable (SSE_PROGRESS_SECRET, an SSE_PROGRESS_* value)
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports it
EXIT_STATUSES = """exit status:
  0 success
  1 refused: the session already ended, the token or the event was rejected
  64 usage error: an unknown option, a missing or malformed argument
  69 unavailable: Redis or the server could not be reached, the port to listen on is in use, or the server extra
     is not installed
  78 configuration: SSE_PROGRESS_SECRET is missing or an SSE_PROGRESS_* value is unusable
  130 interrupted"""
