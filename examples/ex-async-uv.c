/* ex-async-uv: asynchronous requests completed on a libuv loop you own.
 *
 * Opens a stack from a JSON file (the one named on the command line, or a
 * one-layer stack over a sparse file it writes into a temporary folder),
 * submits a batch of writes and then reads to its first exported device,
 * counts the completions as they arrive on the loop's thread, checks the data,
 * and shuts down in the order a program embedding the library should:
 * close the context, let the loop run once more to release its handle, close
 * the loop (which must report nothing left on it), close the stack.
 *
 *   ex-async-uv [CONFIG.json]
 */
/* uv.h and mkdtemp need POSIX declarations, which strict C11 hides. */
#define _POSIX_C_SOURCE 200809L

#include <libthinstack/thinstack.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#define NREQ 256
#define BLOCK 4096

struct job {
  ts_aio_req req;          /* first member, so a ts_aio_req* is a job* */
  unsigned char buf[BLOCK];
};

static int completed, failed;

static void on_done(ts_aio_req *req)
{
  completed++;
  if (req->result) {
    fprintf(stderr, "request at %llu failed: %s\n", (unsigned long long)req->io.offset,
            ts_strerror(req->result));
    failed++;
  }
}

/* Submit one request per job; the iovec lives on this stack frame only,
 * which is fine because submit copies it. */
static int submit_all(ts_aio_ctx *ctx, ts_dev *dev, struct job *jobs, ts_op op)
{
  uint64_t stride = ts_dev_size(dev) / NREQ / BLOCK * BLOCK;
  for (int i = 0; i < NREQ; i++) {
    struct iovec v = { jobs[i].buf, BLOCK };
    jobs[i].req.io = (ts_io){ .op = op, .offset = (uint64_t)i * stride, .length = BLOCK,
                              .iov = &v, .iovcnt = 1 };
    jobs[i].req.cb = on_done;
    int r = ts_aio_submit(ctx, dev, &jobs[i].req);
    if (r) {
      fprintf(stderr, "submit: %s\n", ts_strerror(r));
      return r;
    }
  }
  return 0;
}

int main(int argc, char **argv)
{
  char dir[] = "/tmp/ex-async-uv-XXXXXX";
  char config[sizeof dir + 32], image[sizeof dir + 32];
  const char *path = argc > 1 ? argv[1] : NULL;
  if (!path) {
    if (!mkdtemp(dir)) {
      perror("mkdtemp");
      return 1;
    }
    snprintf(config, sizeof config, "%s/stack.json", dir);
    snprintf(image, sizeof image, "%s/disk.img", dir);
    FILE *f = fopen(config, "w");
    if (!f) {
      perror(config);
      return 1;
    }
    fputs("{ \"version\": 1,\n"
          "  \"layers\": { \"disk\": { \"type\": \"file\", \"path\": \"disk.img\",\n"
          "                            \"size\": \"64M\", \"create\": true } },\n"
          "  \"exports\": [\"disk\"] }\n", f);
    fclose(f);
    path = config;
  }

  ts_error err = { 0 };
  ts_stack *stack = NULL;
  int r = ts_stack_open_file(path, NULL, &stack, &err);
  if (r) {
    fprintf(stderr, "%s: %s\n", path, err.msg);
    return 1;
  }
  ts_dev *dev = ts_stack_dev_at(stack, 0);
  if (!dev || ts_dev_size(dev) < (uint64_t)NREQ * BLOCK) {
    fprintf(stderr, "%s: needs an exported device of at least %d bytes\n", path, NREQ * BLOCK);
    ts_stack_close(stack, NULL);
    return 1;
  }

  uv_loop_t loop;
  uv_loop_init(&loop);
  ts_aio_opts opts = { .struct_size = sizeof opts, .mode = TS_AIO_MODE_LOOP, .loop = &loop,
                       .depth = NREQ };
  ts_aio_ctx *ctx = NULL;
  if ((r = ts_aio_ctx_create(&opts, &ctx, &err)) != 0) {
    fprintf(stderr, "aio: %s\n", err.msg);
    ts_stack_close(stack, NULL);
    return 1;
  }

  static struct job writes[NREQ], reads[NREQ];
  for (int i = 0; i < NREQ; i++)
    memset(writes[i].buf, i & 0xff, BLOCK);
  int status = 0;
  if (submit_all(ctx, dev, writes, TS_OP_WRITE) == 0) {
    uv_run(&loop, UV_RUN_DEFAULT);  /* returns when every write has completed */
    printf("writes: %d completed, %d failed\n", completed, failed);
    if (submit_all(ctx, dev, reads, TS_OP_READ) == 0) {
      uv_run(&loop, UV_RUN_DEFAULT);
      printf("reads:  %d completed in total, %d failed\n", completed, failed);
    }
  }
  for (int i = 0; i < NREQ; i++)
    if (memcmp(reads[i].buf, writes[i].buf, BLOCK) != 0) {
      fprintf(stderr, "block %d read back wrong\n", i);
      status = 1;
      break;
    }
  if (completed != 2 * NREQ || failed)
    status = 1;

  ts_aio_ctx_close(ctx);
  uv_run(&loop, UV_RUN_DEFAULT);  /* releases the context's loop handle */
  if ((r = uv_loop_close(&loop)) != 0) {
    fprintf(stderr, "loop not empty at close: %s\n", uv_strerror(r));
    status = 1;
  }
  if (ts_stack_close(stack, &err) != 0) {
    fprintf(stderr, "close: %s\n", err.msg);
    status = 1;
  }
  if (path == config) {
    unlink(image);
    unlink(config);
    rmdir(dir);
  }
  printf("%s\n", status ? "FAILED" : "ok");
  return status;
}
