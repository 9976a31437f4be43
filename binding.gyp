{
  "targets": [
    {
      "target_name": "engine",
      "sources": ["native/binding.c", "native/loop.c", "native/tcp.c", "native/udp.c"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-std=gnu11", "-fvisibility=hidden"]
    }
  ]
}
