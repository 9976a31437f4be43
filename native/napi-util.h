/*
 * The N-API helpers both addon files use (binding.c: the data path; control.c: the shared
 * engine's control socket): errors thrown with the catalog's code, and argument reading.
 */
#ifndef USERLAND_PROXY_NAPI_UTIL_H
#define USERLAND_PROXY_NAPI_UTIL_H
#include <node_api.h>
#include <stdio.h>
#include <string.h>

/* The error catalog's code for a failed native call (src/core/errors.ts). */
#define NATIVE_ERROR "UPROXY_ERR_NATIVE"

/* Returns NULL from the calling N-API function, with a thrown error, when `call` fails. */
#define CHECK(call)                                         \
  do {                                                      \
    if ((call) != napi_ok) {                                \
      napi_throw_error(env, NATIVE_ERROR, #call " failed"); \
      return NULL;                                          \
    }                                                       \
  } while (0)

/* Throws a JS error "<what>: <strerror>" with the catalog code; returns NULL for the caller. */
static inline napi_value throw_errno(napi_env env, int err, const char *what) {
  char msg[200];
  snprintf(msg, sizeof msg, "%s: %s", what, strerror(err));
  napi_throw_error(env, NATIVE_ERROR, msg);
  return NULL;
}

/* Reads `want` arguments of a call into argv; throws and returns -1 when fewer were given. */
static inline int get_args(napi_env env, napi_callback_info info, size_t want, napi_value *argv) {
  size_t argc = want;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < want) {
    napi_throw_error(env, NATIVE_ERROR, "missing arguments");
    return -1;
  }
  return 0;
}
#endif
