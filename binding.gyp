{
  "targets": [
    {
      "target_name": "engine",
      "sources": ["native/binding.c", "native/control.c", "native/loop.c", "native/access.c", "native/accept.c", "native/tcp.c", "native/time-wait.c", "native/udp.c"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-std=gnu11", "-fvisibility=hidden"]
    },
    {
      "target_name": "userland-proxy-shim",
      "type": "executable",
      "sources": ["native/shim.c"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-std=gnu11"]
    }
  ]
}
