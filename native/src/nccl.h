// NCCL for tensor/expert parallelism: libnccl.so.2 opened at run time (never linked), its
// collectives queued on the calling thread's stream. One thread per GPU: each rank is a thread
// whose current context (init(ordinal)) is its device, as NCCL expects for ncclCommInitRank.
#pragma once
#ifndef NAPI_VERSION
#define NAPI_VERSION 8
#endif
#include <node_api.h>

#include "cuda_api.h"

/**
 * Adds ncclOpen, ncclGetUniqueId, ncclCommInitRank, ncclAllReduce, ncclAllGather and
 * ncclCommDestroy to `exports`. `currentStream` gives the calling thread's stream, or nullptr
 * before init() on that thread.
 */
void registerNccl(napi_env env, napi_value exports, CUstream (*currentStream)());
