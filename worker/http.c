/* http: see http.h. */
#include "http.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static const char *codes[KB_OUT__CNT] = {
    [KB_OUT_OK] = "",
    [KB_OUT_RATE_LIMITED] = "rate_limited",
    [KB_OUT_TIMEOUT] = "timeout",
    [KB_OUT_CONNECTION_ERROR] = "connection_error",
    [KB_OUT_SERVER_ERROR] = "server_error",
    [KB_OUT_CLIENT_ERROR] = "client_error",
    [KB_OUT_INVALID_RESPONSE] = "invalid_response",
    [KB_OUT_RESPONSE_TOO_LARGE] = "response_too_large",
};

const char *kb_outcome_code(kb_outcome_t out) {
        return (unsigned)out < KB_OUT__CNT ? codes[out] : "unknown";
}

int kb_outcome_retryable(kb_outcome_t out) {
        return out == KB_OUT_RATE_LIMITED || out == KB_OUT_TIMEOUT ||
               out == KB_OUT_CONNECTION_ERROR || out == KB_OUT_SERVER_ERROR;
}

kb_outcome_t kb_http_classify(CURLcode cc, long http_status, int too_large,
                              int body_is_json) {
        if (too_large)
                return KB_OUT_RESPONSE_TOO_LARGE;
        switch (cc) {
        case CURLE_OK:
                break;
        case CURLE_OPERATION_TIMEDOUT:
                return KB_OUT_TIMEOUT;
        case CURLE_FILESIZE_EXCEEDED:
                return KB_OUT_RESPONSE_TOO_LARGE;
        case CURLE_WRITE_ERROR:
                /* Only our write callback refuses data, and only for size. */
                return KB_OUT_RESPONSE_TOO_LARGE;
        default:
                /* DNS, connect, TLS, reset, empty reply, partial body,
                 * HTTP/2 stream errors: the transport failed. */
                return KB_OUT_CONNECTION_ERROR;
        }
        if (http_status == 429)
                return KB_OUT_RATE_LIMITED;
        if (http_status == 408)
                return KB_OUT_TIMEOUT;
        if (http_status >= 500 && http_status <= 599)
                return KB_OUT_SERVER_ERROR;
        if (http_status >= 200 && http_status <= 299)
                return body_is_json ? KB_OUT_OK : KB_OUT_INVALID_RESPONSE;
        return KB_OUT_CLIENT_ERROR;
}

int64_t kb_http_retry_after_ms(const char *value, time_t now) {
        const int64_t cap = 24LL * 3600 * 1000;
        const char *p;
        if (!value)
                return -1;
        while (*value == ' ' || *value == '\t')
                value++;
        if (!*value)
                return -1;
        for (p = value; isdigit((unsigned char)*p); p++)
                ;
        if (p > value) {
                const char *q = p;
                while (*q == ' ' || *q == '\t' || *q == '\r' || *q == '\n')
                        q++;
                if (*q)
                        return -1;
                if (p - value > 6)
                        return cap; /* more than 11 days: capped anyway */
                int64_t s = strtoll(value, NULL, 10);
                return s * 1000 > cap ? cap : s * 1000;
        }
        {
                time_t t = curl_getdate(value, NULL);
                if (t == (time_t)-1)
                        return -1;
                if (t <= now)
                        return 0;
                /* In seconds first: a date centuries ahead (curl_getdate
                 * takes any year) would overflow the product. */
                if ((int64_t)t - (int64_t)now > cap / 1000)
                        return cap;
                return ((int64_t)t - (int64_t)now) * 1000;
        }
}

/* ---- one request ------------------------------------------------------ */

CURL *kb_http_req_reset(kb_http_req_t *hr, kb_easypool_t *ep, size_t max,
                        size_t keep) {
        if (!hr->hr_easy)
                hr->hr_easy = kb_easypool_get(ep);
        else
                curl_easy_reset(hr->hr_easy);
        curl_slist_free_all(hr->hr_hdrs);
        hr->hr_hdrs = NULL;
        hr->hr_hdr_err = 0;
        hr->hr_resp_len = 0;
        hr->hr_resp_total = 0;
        if (hr->hr_resp)
                hr->hr_resp[0] = '\0'; /* no body of the last attempt */
        hr->hr_max = max;
        hr->hr_keep = keep && keep < max ? keep : max;
        hr->hr_too_large = 0;
        hr->hr_retry_after[0] = '\0';
        hr->hr_errbuf[0] = '\0';
        return hr->hr_easy;
}

int kb_http_req_header(kb_http_req_t *hr, const char *line) {
        struct curl_slist *n = curl_slist_append(hr->hr_hdrs, line);
        if (!n) {
                hr->hr_hdr_err = 1;
                return -1;
        }
        hr->hr_hdrs = n;
        return 0;
}

int kb_http_req_headerf(kb_http_req_t *hr, const char *fmt, ...) {
        char buf[512], *line = buf;
        va_list ap;
        int r, rc;
        va_start(ap, fmt);
        r = vsnprintf(buf, sizeof(buf), fmt, ap);
        va_end(ap);
        if (r >= (int)sizeof(buf)) {
                /* Never cut: an Idempotency-Key of a long batch and item id
                 * takes over 1 KiB, and two keys cut alike would share one
                 * (issue 15). */
                va_start(ap, fmt);
                r = vasprintf(&line, fmt, ap);
                va_end(ap);
        }
        if (r < 0) {
                hr->hr_hdr_err = 1;
                return -1;
        }
        rc = kb_http_req_header(hr, line);
        if (line != buf)
                free(line);
        return rc;
}

/* The first buffer: room for the announced length when there is one (one
 * buffer per call in flight: most responses are far below the 4 KiB this
 * used to start with), else 1 KiB (or what is kept, when less). */
static size_t resp_first_cap(kb_http_req_t *hr, size_t need) {
        curl_off_t cl = -1;
        curl_easy_getinfo(hr->hr_easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl);
        if (cl > 0 && (size_t)cl + 1 >= need && (size_t)cl <= hr->hr_keep)
                return (size_t)cl + 1;
        if (need > 1024)
                return need;
        return hr->hr_keep < 1024 ? hr->hr_keep + 1 : 1024;
}

size_t kb_http_req_write_cb(char *ptr, size_t size, size_t nmemb, void *ud) {
        kb_http_req_t *hr = ud;
        size_t n = size * nmemb, k = 0;
        if (n > hr->hr_max - hr->hr_resp_total) {
                hr->hr_too_large = 1;
                return 0; /* aborts the transfer with CURLE_WRITE_ERROR */
        }
        hr->hr_resp_total += n;
        if (hr->hr_resp_len < hr->hr_keep)
                k = hr->hr_keep - hr->hr_resp_len < n
                        ? hr->hr_keep - hr->hr_resp_len
                        : n;
        if (hr->hr_resp_len + k + 1 > hr->hr_resp_cap) {
                size_t need = hr->hr_resp_len + k + 1;
                size_t cap = hr->hr_resp_cap ? hr->hr_resp_cap
                                             : resp_first_cap(hr, need);
                char *nb;
                while (cap < need)
                        cap *= 2;
                if (!(nb = realloc(hr->hr_resp, cap)))
                        return 0;
                hr->hr_resp = nb;
                hr->hr_resp_cap = cap;
        }
        memcpy(hr->hr_resp + hr->hr_resp_len, ptr, k);
        hr->hr_resp_len += k;
        hr->hr_resp[hr->hr_resp_len] = '\0';
        return n;
}

size_t kb_http_req_header_cb(char *buf, size_t size, size_t nitems, void *ud) {
        kb_http_req_t *hr = ud;
        size_t n = size * nitems;
        static const char ra[] = "retry-after:";
        if (n > sizeof(ra) - 1 && !strncasecmp(buf, ra, sizeof(ra) - 1)) {
                size_t vl = n - (sizeof(ra) - 1);
                const char *v = buf + sizeof(ra) - 1;
                while (vl && (*v == ' ' || *v == '\t'))
                        v++, vl--;
                while (vl && (v[vl - 1] == '\r' || v[vl - 1] == '\n' ||
                              v[vl - 1] == ' '))
                        vl--;
                if (vl >= sizeof(hr->hr_retry_after))
                        vl = sizeof(hr->hr_retry_after) - 1;
                memcpy(hr->hr_retry_after, v, vl);
                hr->hr_retry_after[vl] = '\0';
        }
        return n;
}

int kb_http_req_prepare(kb_http_req_t *hr, kb_xfer_t *xf, const char *url,
                        const char *body, size_t body_len, long timeout_ms,
                        long connect_timeout_ms) {
        CURL *e = hr->hr_easy;
        if (!e || hr->hr_hdr_err || !hr->hr_hdrs)
                return -1;
        curl_easy_setopt(e, CURLOPT_PRIVATE, xf);
        curl_easy_setopt(e, CURLOPT_URL, url);
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, hr->hr_hdrs);
        if (body) {
                curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
                curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE,
                                 (curl_off_t)body_len);
        }
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, kb_http_req_write_cb);
        curl_easy_setopt(e, CURLOPT_WRITEDATA, hr);
        curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, kb_http_req_header_cb);
        curl_easy_setopt(e, CURLOPT_HEADERDATA, hr);
        curl_easy_setopt(e, CURLOPT_ERRORBUFFER, hr->hr_errbuf);
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, timeout_ms);
        curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, connect_timeout_ms);
        curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
        curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
        return 0;
}

void kb_http_req_tls(kb_http_req_t *hr, int verify, const char *ca_file) {
        curl_easy_setopt(hr->hr_easy, CURLOPT_SSL_VERIFYPEER, verify ? 1L : 0L);
        curl_easy_setopt(hr->hr_easy, CURLOPT_SSL_VERIFYHOST, verify ? 2L : 0L);
        if (ca_file && *ca_file)
                curl_easy_setopt(hr->hr_easy, CURLOPT_CAINFO, ca_file);
}

int kb_http_req_start(kb_http_req_t *hr, kb_loop_t *loop) {
        return hr->hr_easy ? kb_loop_add(loop, hr->hr_easy) : -1;
}

long kb_http_req_status(const kb_http_req_t *hr) {
        long st = 0;
        if (hr->hr_easy)
                curl_easy_getinfo(hr->hr_easy, CURLINFO_RESPONSE_CODE, &st);
        return st;
}

int64_t kb_http_req_retry_after_ms(const kb_http_req_t *hr, time_t now) {
        return kb_http_retry_after_ms(
            hr->hr_retry_after[0] ? hr->hr_retry_after : NULL, now);
}

void kb_http_req_release(kb_http_req_t *hr, kb_easypool_t *ep) {
        if (hr->hr_easy)
                kb_easypool_put(ep, hr->hr_easy);
        hr->hr_easy = NULL;
        curl_slist_free_all(hr->hr_hdrs);
        hr->hr_hdrs = NULL;
        free(hr->hr_resp);
        hr->hr_resp = NULL;
        hr->hr_resp_len = hr->hr_resp_cap = hr->hr_resp_total = 0;
}
