{
  "targets": [
    {
      "target_name": "engine",
      "sources": ["native/engine.c"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-std=gnu11"]
    }
  ]
}
