/* oxinfer model plugin ABI, version 1.0. See docs/plugin-abi.md.
 *
 * A plugin is a shared library exporting
 *     const OxPluginApi *oxinfer_plugin_entry(void);
 * All strings are UTF-8 and NOT NUL-terminated (pointer + length). All data is little-endian.
 * This header mirrors crates/plugin-abi/src/lib.rs, which is normative. */
#ifndef OXINFER_PLUGIN_H
#define OXINFER_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define OX_MAGIC 0x474C50464E49584FULL /* the bytes "OXINFPLG" read as a little-endian u64 */
#define OX_ABI_MAJOR 1u
#define OX_ABI_MINOR 0u

/* Datatype codes. */
enum {
  OX_BOOL = 1, OX_UINT8 = 2, OX_UINT16 = 3, OX_UINT32 = 4, OX_UINT64 = 5,
  OX_INT8 = 6, OX_INT16 = 7, OX_INT32 = 8, OX_INT64 = 9,
  OX_FP16 = 10, OX_BF16 = 11, OX_FP32 = 12, OX_FP64 = 13, OX_BYTES = 14
};

/* Error codes. */
enum { OX_ERROR_INVALID_INPUT = 1, OX_ERROR_INTERNAL = 2 };

typedef struct OxError OxError; /* opaque, created and owned by the host */

/* An input tensor lent for one call. BYTES data: per element, a u32 length then the bytes. */
typedef struct OxTensor {
  const uint8_t *name;
  size_t name_len;
  uint32_t datatype;
  const int64_t *shape;
  size_t rank;
  const uint8_t *data;
  size_t data_len;
} OxTensor;

/* Functions the host provides. */
typedef struct OxHostApi {
  size_t struct_size;
  /* Creates an error; return it from a plugin function. */
  OxError *(*error_new)(uint32_t code, const uint8_t *message, size_t message_len);
  /* Allocates a declared output and returns the buffer to fill (byte_len bytes, valid until
   * execute returns), or NULL when refused (unknown name, wrong datatype, size not matching). */
  uint8_t *(*alloc_output)(void *outputs, const uint8_t *name, size_t name_len, uint32_t datatype,
                           const int64_t *shape, size_t rank, size_t byte_len);
} OxHostApi;

/* The table the plugin exports. Every function returns NULL on success or an OxError. */
typedef struct OxPluginApi {
  uint64_t magic;          /* OX_MAGIC */
  uint32_t abi_major;      /* OX_ABI_MAJOR */
  uint32_t abi_minor;      /* OX_ABI_MINOR */
  size_t struct_size;      /* sizeof(OxPluginApi) */
  uint32_t thread_safe;    /* 0: the host serialises calls to an instance */
  OxError *(*create)(const OxHostApi *host, const uint8_t *options_json, size_t options_len,
                     const uint8_t *model_dir, size_t model_dir_len, void **instance);
  OxError *(*metadata_json)(void *instance, const uint8_t **json, size_t *json_len);
  OxError *(*execute)(void *instance, const OxHostApi *host, const OxTensor *inputs,
                      size_t input_count, void *outputs);
  void (*destroy)(void *instance);
} OxPluginApi;

const OxPluginApi *oxinfer_plugin_entry(void);

#ifdef __cplusplus
}
#endif
#endif /* OXINFER_PLUGIN_H */
