/* fp_gcm.h - AES-256-GCM for the sleeve, through OpenSSL's EVP interface.
 *
 * The encrypted sleeve seals frames with one of two ciphers, agreed in the handshake
 * (router/crypto/ciphers.py): NaCl secretbox (libsodium, fp_sys.h) or AES-256-GCM, which
 * OpenSSL runs with AES-NI/VAES and carry-less multiply at several times secretbox's
 * speed. An EVP context holds the expanded key and is not thread-safe, so each encoder
 * (one per thread) keeps its own contexts per peer (encoder.pxi, "cipher contexts"):
 * fp_gcm_key() expands a key once per session, fp_gcm_seal()/fp_gcm_open() then only set
 * the 12-byte nonce and run. Both work in place; the 16-byte tag is detached. Every
 * function returns 0 on success and -1 on failure (for open: a forged or corrupt packet).
 */
#ifndef WEAVE_FP_GCM_H
#define WEAVE_FP_GCM_H

#include <openssl/evp.h>
#include <stdint.h>

#define FP_GCM_TAG 16
#define FP_GCM_NONCE 12

static inline void *fp_gcm_new(void) { return EVP_CIPHER_CTX_new(); }

static inline void fp_gcm_free(void *ctx) { EVP_CIPHER_CTX_free((EVP_CIPHER_CTX *)ctx); }

/* Load a 32-byte key: enc = 1 for sealing, 0 for opening. */
static inline int fp_gcm_key(void *ctx, const uint8_t *key, int enc) {
    EVP_CIPHER_CTX *c = (EVP_CIPHER_CTX *)ctx;
    if (EVP_CIPHER_CTX_reset(c) != 1) return -1;
    return EVP_CipherInit_ex(c, EVP_aes_256_gcm(), NULL, key, NULL, enc) == 1 ? 0 : -1;
}

/* Encrypt data[0:len] in place under nonce; the tag goes to mac. */
static inline int fp_gcm_seal(void *ctx, uint8_t *mac, uint8_t *data, uint32_t len,
                              const uint8_t *nonce) {
    EVP_CIPHER_CTX *c = (EVP_CIPHER_CTX *)ctx;
    int out = 0;
    if (EVP_EncryptInit_ex(c, NULL, NULL, NULL, nonce) != 1) return -1;
    if (len && EVP_EncryptUpdate(c, data, &out, data, (int)len) != 1) return -1;
    if (EVP_EncryptFinal_ex(c, data + out, &out) != 1) return -1;
    return EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, FP_GCM_TAG, mac) == 1 ? 0 : -1;
}

/* Decrypt data[0:len] in place and check the tag; -1 if it does not verify (the data
 * is then garbage and must be dropped). */
static inline int fp_gcm_open(void *ctx, uint8_t *data, uint32_t len, const uint8_t *mac,
                              const uint8_t *nonce) {
    EVP_CIPHER_CTX *c = (EVP_CIPHER_CTX *)ctx;
    int out = 0;
    if (EVP_DecryptInit_ex(c, NULL, NULL, NULL, nonce) != 1) return -1;
    if (len && EVP_DecryptUpdate(c, data, &out, data, (int)len) != 1) return -1;
    if (EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, FP_GCM_TAG, (void *)mac) != 1) return -1;
    return EVP_DecryptFinal_ex(c, data + out, &out) == 1 ? 0 : -1;
}

#endif
