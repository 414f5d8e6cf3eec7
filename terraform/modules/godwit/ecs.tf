resource "aws_ecs_cluster" "this" {
  name = local.prefix

  setting {
    name  = "containerInsights"
    value = "enabled"
  }

  tags = local.tags
}

resource "aws_ecs_cluster_capacity_providers" "this" {
  cluster_name       = aws_ecs_cluster.this.name
  capacity_providers = ["FARGATE"]
}

locals {
  batch_family    = "${local.prefix}-batch"
  task_family_arn = "arn:${local.partition}:ecs:${local.region}:${local.account_id}:task-definition/${local.batch_family}:*"

  # What the container gets: the secrets as environment variables (the pipeline file refers to
  # them as $${GODWIT_DATABASE_URL} and $${GODWIT_REDIS_URL}), the region, the log filter.
  container_secrets = concat(
    [{ name = "GODWIT_DATABASE_URL", valueFrom = aws_secretsmanager_secret.database_url.arn }],
    local.redis_on ? [{ name = "GODWIT_REDIS_URL", valueFrom = "${aws_secretsmanager_secret.redis[0].arn}:url::" }] : [],
  )
  container_environment = [
    { name = "AWS_REGION", value = local.region },
    { name = "GODWIT_LOG", value = "info" },
  ]

  container_base = {
    name                   = local.container
    image                  = var.image
    essential              = true
    readonlyRootFilesystem = true
    user                   = "65532:65532"
    environment            = local.container_environment
    secrets                = local.container_secrets
    # The image's working folder (events file, spill files) on the task's own storage.
    mountPoints = [{ sourceVolume = "work", containerPath = "/var/lib/godwit", readOnly = false }]
    # SIGTERM, then up to 2 minutes to flush, checkpoint and confirm the slot.
    stopTimeout = 120
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = aws_cloudwatch_log_group.this.name
        awslogs-region        = local.region
        awslogs-stream-prefix = "ecs"
      }
    }
    portMappings = var.metrics_listen_all ? [{ containerPort = var.metrics_port, protocol = "tcp" }] : []
  }
}

# The batch shape: `godwit run PIPELINE --once` — the full load where due, CDC up to the WAL
# position read at start, then exit. Also the task the sharded load overrides. With a sharded
# initial load of a full-load-and-cdc pipeline, this task and the CDC service coordinate it
# (--shard 1/N, see shard.tf).
resource "aws_ecs_task_definition" "batch" {
  family                   = local.batch_family
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.task_cpu
  memory                   = var.task_memory
  task_role_arn            = aws_iam_role.task.arn
  execution_role_arn       = aws_iam_role.execution.arn

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = var.cpu_architecture
  }

  volume {
    name = "work"
  }

  container_definitions = jsonencode([merge(local.container_base, {
    command = concat(["run", local.pipeline_url, "--once", "--log-format", "json"], local.shard_args)
  })])

  tags = local.tags
}

resource "aws_scheduler_schedule" "batch" {
  count                        = var.batch_schedule == null ? 0 : 1
  name                         = "${local.prefix}-batch"
  description                  = "godwit ${var.name}: godwit run --once"
  schedule_expression          = var.batch_schedule
  schedule_expression_timezone = var.schedule_timezone
  kms_key_arn                  = aws_kms_key.this.arn

  flexible_time_window {
    mode = "OFF"
  }

  target {
    arn      = aws_ecs_cluster.this.arn
    role_arn = aws_iam_role.scheduler[0].arn

    ecs_parameters {
      task_definition_arn     = aws_ecs_task_definition.batch.arn
      launch_type             = "FARGATE"
      task_count              = 1
      enable_ecs_managed_tags = true
      propagate_tags          = "TASK_DEFINITION"

      network_configuration {
        subnets          = var.private_subnet_ids
        security_groups  = [aws_security_group.godwit.id]
        assign_public_ip = false
      }
    }

    # A run that fails is retried by the next schedule (it resumes); none in between.
    retry_policy {
      maximum_retry_attempts = 0
    }
  }
}

# The CDC service: `godwit run PIPELINE` follows changes until stopped. ECS replaces the task
# when `godwit health` (the container's /healthz) fails three times in a row.
resource "aws_ecs_task_definition" "cdc" {
  count                    = var.cdc_service ? 1 : 0
  family                   = "${local.prefix}-cdc"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.task_cpu
  memory                   = var.task_memory
  task_role_arn            = aws_iam_role.task.arn
  execution_role_arn       = aws_iam_role.execution.arn

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = var.cpu_architecture
  }

  volume {
    name = "work"
  }

  container_definitions = jsonencode([merge(local.container_base, {
    command = concat(["run", local.pipeline_url, "--log-format", "json"], local.shard_args)
    healthCheck = {
      command     = ["CMD", "/usr/local/bin/godwit", "health", "--url", local.health_url]
      interval    = 30
      timeout     = 10
      retries     = 3
      startPeriod = 120
    }
  })])

  tags = local.tags
}

resource "aws_ecs_service" "cdc" {
  count           = var.cdc_service ? 1 : 0
  name            = "${local.prefix}-cdc"
  cluster         = aws_ecs_cluster.this.id
  task_definition = aws_ecs_task_definition.cdc[0].arn
  desired_count   = 1
  launch_type     = "FARGATE"

  # One run owns the pipeline (its lease): stop the old task before starting the new one.
  deployment_minimum_healthy_percent = 0
  deployment_maximum_percent         = 100

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  network_configuration {
    subnets          = var.private_subnet_ids
    security_groups  = [aws_security_group.godwit.id]
    assign_public_ip = false
  }

  enable_ecs_managed_tags = true
  propagate_tags          = "SERVICE"
  tags                    = local.tags

  lifecycle {
    precondition {
      condition     = var.batch_schedule == null
      error_message = "cdc_service and batch_schedule both run the same pipeline: its lease lets only one of them work at a time. Choose one shape."
    }
  }
}
