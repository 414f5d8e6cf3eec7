data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}
data "aws_region" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition
  region     = data.aws_region.current.name
  prefix     = "godwit-${var.name}"
  tags       = merge({ "godwit:pipeline" = var.name }, var.tags)

  bucket_name   = coalesce(var.bucket_name, "${var.name}-godwit-${local.account_id}")
  pipeline_key  = "pipelines/${var.name}.toml"
  pipeline_url  = "s3://${local.bucket_name}/${local.pipeline_key}"
  health_url    = "http://127.0.0.1:${var.metrics_port}/healthz"
  lambda_on     = var.lambda_zip_path != null
  container     = "godwit"
  log_group     = "/godwit/${var.name}"
  redis_port    = 6379
  redis_on      = var.redis_enabled
  redis_cluster = var.redis_enabled && var.redis_cluster_mode

  # The pipeline file: every key below exists in godwit's pipeline reference (scripts/check-deploy
  # compares them with src/config/build.rs).
  pipeline_toml = templatefile("${path.module}/templates/pipeline.toml.tftpl", {
    name                   = var.name
    mode                   = var.mode
    tables_include         = var.tables_include
    tables_exclude         = var.tables_exclude
    load_parallel          = var.load_parallel
    bucket                 = local.bucket_name
    prefix                 = var.target_prefix
    kms_key_arn            = aws_kms_key.this.arn
    account_id             = local.account_id
    format                 = var.target_format
    cdc_max_batch_interval = var.cdc_max_batch_interval
    date_partitioning      = var.date_partitioning
    redis_enabled          = local.redis_on
    redis_cluster          = local.redis_cluster
    redis_key_prefix       = var.redis_key_prefix
    projections            = var.cache_projections
    sns_topic_arn          = aws_sns_topic.events.arn
    cdc_lag_threshold      = var.cdc_lag_threshold
    metrics_listen         = "${var.metrics_listen_all ? "0.0.0.0" : "127.0.0.1"}:${var.metrics_port}"
    health_threshold       = var.health_threshold
    memory_limit           = var.memory_limit
    recoverable_retries    = var.recoverable_retries
  })
}

# One customer-managed key for everything godwit's data touches: the bucket, the topic, the
# secrets, Redis at rest, the log group and the Lambda environment.
resource "aws_kms_key" "this" {
  description             = "godwit ${var.name}: S3 objects, SNS, Secrets Manager, ElastiCache, logs"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.kms.json
  tags                    = local.tags
}

resource "aws_kms_alias" "this" {
  name          = "alias/${local.prefix}"
  target_key_id = aws_kms_key.this.key_id
}

# Key policy (a resource policy): the account administers the key through IAM, as in AWS's
# default key policy; CloudWatch Logs encrypts the log group; CloudWatch alarms publish to the
# encrypted topic. godwit's own use is granted by its role's IAM policy (iam.tf).
data "aws_iam_policy_document" "kms" {
  #checkov:skip=CKV_AWS_109:A key policy names its own key as "*"; the account root statement is AWS's default key policy, which hands control to IAM.
  #checkov:skip=CKV_AWS_111:A key policy names its own key as "*"; the account root statement is AWS's default key policy, which hands control to IAM.
  #checkov:skip=CKV_AWS_356:A key policy names its own key as "*" (the only resource a key policy can have).
  statement {
    sid       = "AccountAdministersThroughIAM"
    actions   = ["kms:*"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:root"]
    }
  }

  statement {
    sid       = "CloudWatchLogsEncryptsTheLogGroup"
    actions   = ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:DescribeKey"]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["logs.${local.region}.amazonaws.com"]
    }
    condition {
      test     = "ArnEquals"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:${local.log_group}"]
    }
  }

  statement {
    sid       = "CloudWatchAlarmsPublishToTheTopic"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["cloudwatch.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}
