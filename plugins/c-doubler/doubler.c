/* A model plugin written in C against docs/oxinfer_plugin.h: y = 2 * x for FP32 x [-1].
 * It takes no options: any key under [models.options] (except model_dir, which the host takes
 * out) is refused at load, so a misspelt option never goes unnoticed.
 * Build: cc -shared -fPIC -I docs -o libdoubler.so plugins/c-doubler/doubler.c
 * The end-to-end tests build and serve it, so this file and the header stay correct. */
#include <string.h>

#include "oxinfer_plugin.h"

static const char META[] =
    "{\"inputs\":[{\"name\":\"x\",\"datatype\":\"FP32\",\"shape\":[-1]}],"
    "\"outputs\":[{\"name\":\"y\",\"datatype\":\"FP32\",\"shape\":[-1]}]}";

static OxError *create(const OxHostApi *host, const uint8_t *options, size_t options_len,
                       const uint8_t *dir, size_t dir_len, void **instance) {
  (void)dir; (void)dir_len;
  /* The host passes the options as a compact JSON object: "{}" when there are none. */
  if (options_len != 2 || memcmp(options, "{}", 2) != 0) {
    static const char PREFIX[] = "c-doubler takes no options, got ";
    char message[256];
    size_t n = sizeof PREFIX - 1;
    size_t m = options_len < sizeof message - n ? options_len : sizeof message - n;
    memcpy(message, PREFIX, n);
    if (m > 0) memcpy(message + n, options, m);
    return host->error_new(OX_ERROR_INVALID_INPUT, (const uint8_t *)message, n + m);
  }
  *instance = (void *)META; /* no state needed */
  return NULL;
}

static OxError *metadata(void *instance, const uint8_t **json, size_t *len) {
  (void)instance;
  *json = (const uint8_t *)META;
  *len = sizeof META - 1;
  return NULL;
}

static OxError *execute(void *instance, const OxHostApi *host, const OxTensor *in, size_t n,
                        void *out) {
  (void)instance;
  if (n != 1) return host->error_new(OX_ERROR_INTERNAL, (const uint8_t *)"one input", 9);
  for (size_t k = 0; k < in[0].data_len / 4; k++) {
    float x;
    memcpy(&x, in[0].data + 4 * k, 4);
    if (x < 0) return host->error_new(OX_ERROR_INVALID_INPUT, (const uint8_t *)"negative input", 14);
  }
  float *y = (float *)host->alloc_output(out, (const uint8_t *)"y", 1, OX_FP32, in[0].shape,
                                         in[0].rank, in[0].data_len);
  if (!y) return host->error_new(OX_ERROR_INTERNAL, (const uint8_t *)"alloc_output refused", 20);
  for (size_t k = 0; k < in[0].data_len / 4; k++) {
    float x;
    memcpy(&x, in[0].data + 4 * k, 4);
    y[k] = 2 * x;
  }
  return NULL;
}

static void destroy(void *instance) { (void)instance; }

static const OxPluginApi API = {OX_MAGIC, OX_ABI_MAJOR, OX_ABI_MINOR, sizeof(OxPluginApi), 1,
                                create,   metadata,     execute,      destroy};

const OxPluginApi *oxinfer_plugin_entry(void) { return &API; }
