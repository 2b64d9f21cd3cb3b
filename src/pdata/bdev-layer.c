/* Metadata device over a libthinstack device, through the public request
 * API only, so thin metadata can live on any stack node (file, fault, crypt). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "pdata/bdev.h"

static int layer_read(void *ctx, uint64_t block, uint32_t count, void *buf)
{
  return ts_pread(ctx, buf, (size_t)count * PD_BLOCK_SIZE, block * PD_BLOCK_SIZE);
}

static int layer_write(void *ctx, uint64_t block, uint32_t count, const void *buf)
{
  return ts_pwrite(ctx, buf, (size_t)count * PD_BLOCK_SIZE, block * PD_BLOCK_SIZE, 0);
}

static int layer_writev(void *ctx, uint64_t block, uint32_t count, const struct iovec *iov,
                        int iovcnt)
{
  (void)count;
  return ts_pwritev(ctx, iov, iovcnt, block * PD_BLOCK_SIZE, 0);
}

static int layer_flush(void *ctx)
{
  return ts_flush(ctx);
}

static const struct pd_bdev_ops layer_ops = { layer_read, layer_write, layer_flush, NULL,
                                              layer_writev };

int pd_bdev_from_ts_dev(struct pd_bdev *out, ts_dev *dev, bool read_only, ts_error *err)
{
  uint64_t size = ts_dev_size(dev);
  if (size < PD_BLOCK_SIZE) {
    if (err) {
      err->code = -EINVAL;
      snprintf(err->msg, sizeof(err->msg), "metadata device is smaller than one 4 KiB block");
    }
    return -EINVAL;
  }
  out->ops = &layer_ops;
  out->ctx = dev;
  out->nr_blocks = size / PD_BLOCK_SIZE;
  out->read_only = read_only;
  return 0;
}
