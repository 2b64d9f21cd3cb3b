/* ex-async-workers: the lowest-cost async path, with callbacks on the
 * library's workers.
 *
 * A VMM with I/O threads of its own does not need completions on a loop:
 * TS_AIO_MODE_WORKER runs each callback on the worker that ran the request,
 * and a request the callback submits becomes that worker's next one without
 * a queue or a wake-up. Here QUEUES "virtqueues" each keep one request in
 * flight and refill it from its own callback, writing their stripe of the
 * device block by block; the main thread waits for all of them on a
 * condition variable, reads the device back with the synchronous API and
 * checks every block.
 *
 *   ex-async-workers [CONFIG.json]
 */
/* pthreads and mkdtemp need POSIX declarations, which strict C11 hides. */
#define _POSIX_C_SOURCE 200809L

#include <libthinstack/thinstack.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define QUEUES 8
#define BLOCKS 128 /* per queue */
#define BLOCK 4096

struct queue {
  ts_aio_req req;          /* first member, so a ts_aio_req* is a queue* */
  ts_aio_ctx *ctx;
  ts_dev *dev;
  int id, next, failed;    /* touched only by the callback: one request at a time */
  unsigned char buf[BLOCK];
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t all_done = PTHREAD_COND_INITIALIZER;
static int queues_running = QUEUES;

static void fill(unsigned char *buf, int queue, int block)
{
  memset(buf, (queue * BLOCKS + block) & 0xff, BLOCK);
  memcpy(buf, &block, sizeof block);
}

static uint64_t block_offset(int queue, int block)
{
  return ((uint64_t)block * QUEUES + (uint64_t)queue) * BLOCK;
}

static void queue_finished(void)
{
  pthread_mutex_lock(&lock);
  if (--queues_running == 0)
    pthread_cond_signal(&all_done);
  pthread_mutex_unlock(&lock);
}

/* Runs on a worker. The iovec may live on this frame: submit copies it. */
static void submit_next(struct queue *q)
{
  fill(q->buf, q->id, q->next);
  struct iovec v = { q->buf, BLOCK };
  q->req.io = (ts_io){ .op = TS_OP_WRITE, .offset = block_offset(q->id, q->next),
                       .length = BLOCK, .iov = &v, .iovcnt = 1 };
  int r = ts_aio_submit(q->ctx, q->dev, &q->req);
  if (r) {
    fprintf(stderr, "queue %d: submit: %s\n", q->id, ts_strerror(r));
    q->failed++;
    queue_finished();
  }
}

static void on_done(ts_aio_req *req)
{
  struct queue *q = (struct queue *)req;
  if (req->result) {
    fprintf(stderr, "queue %d block %d: %s\n", q->id, q->next, ts_strerror(req->result));
    q->failed++;
  }
  if (++q->next == BLOCKS || q->failed)
    queue_finished();
  else
    submit_next(q); /* run next by this same worker */
}

int main(int argc, char **argv)
{
  char dir[] = "/tmp/ex-async-workers-XXXXXX";
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
          "                            \"size\": \"16M\", \"create\": true } },\n"
          "  \"exports\": [\"disk\"] }\n", f);
    fclose(f);
    path = config;
  }

  ts_error err = { 0 };
  ts_stack *stack = NULL;
  if (ts_stack_open_file(path, NULL, &stack, &err) != 0) {
    fprintf(stderr, "%s: %s\n", path, err.msg);
    return 1;
  }
  ts_dev *dev = ts_stack_dev_at(stack, 0);
  if (!dev || ts_dev_size(dev) < (uint64_t)QUEUES * BLOCKS * BLOCK) {
    fprintf(stderr, "%s: needs an exported device of at least %d bytes\n", path,
            QUEUES * BLOCKS * BLOCK);
    ts_stack_close(stack, NULL);
    return 1;
  }

  ts_aio_opts opts = { .struct_size = sizeof opts, .mode = TS_AIO_MODE_WORKER, .workers = 4,
                       .depth = QUEUES };
  ts_aio_ctx *ctx = NULL;
  if (ts_aio_ctx_create(&opts, &ctx, &err) != 0) {
    fprintf(stderr, "aio: %s\n", err.msg);
    ts_stack_close(stack, NULL);
    return 1;
  }
  static struct queue queues[QUEUES];
  for (int i = 0; i < QUEUES; i++) {
    queues[i] = (struct queue){ .ctx = ctx, .dev = dev, .id = i };
    queues[i].req.cb = on_done;
    submit_next(&queues[i]);
  }
  pthread_mutex_lock(&lock);
  while (queues_running > 0)
    pthread_cond_wait(&all_done, &lock);
  pthread_mutex_unlock(&lock);
  /* Every callback has returned its slot once close returns. */
  ts_aio_ctx_close(ctx);

  int status = 0, failed = 0;
  for (int i = 0; i < QUEUES; i++)
    failed += queues[i].failed;
  unsigned char want[BLOCK], got[BLOCK];
  for (int q = 0; q < QUEUES && !failed && !status; q++)
    for (int b = 0; b < BLOCKS; b++) {
      fill(want, q, b);
      if (ts_pread(dev, got, BLOCK, block_offset(q, b)) != 0 || memcmp(got, want, BLOCK) != 0) {
        fprintf(stderr, "queue %d block %d read back wrong\n", q, b);
        status = 1;
        break;
      }
    }
  printf("%d queues x %d writes on the workers, %d failed\n", QUEUES, BLOCKS, failed);
  if (failed)
    status = 1;
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
